#!/bin/bash
set -euo pipefail
upper="gen/multi/upper.txt"
grep -q "HELLO FROM GRANARY" "$upper" || { echo "bad upper: $(cat "$upper")"; exit 1; }
[ "$(wc -l < gen/chained.txt)" -eq 6 ] || { echo "bad chained"; exit 1; }
[ "$(cc/greeter sh)" = "hello, sh!" ] || { echo "bad greeter"; exit 1; }
echo ok
