"""Tiny py_binary for the Granary Bazel test workspace."""


def greeting() -> str:
    return "hello from python"


if __name__ == "__main__":
    print(greeting())
