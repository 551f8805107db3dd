import unittest

from pyapp import hello_py


class HelloTest(unittest.TestCase):
    def test_greeting(self):
        self.assertEqual(hello_py.greeting(), "hello from python")


if __name__ == "__main__":
    unittest.main()
