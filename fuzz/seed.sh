#!/bin/sh
# Writes the seeds that come from the repository: one file per distinct trace
# line of tests/traces, and the policies of policies/. (The selector and
# exposition seeds are written by hand and committed.)
set -e
cd "$(dirname "$0")"
mkdir -p seeds/trace_line seeds/policy
cat ../tests/traces/*.jsonl | grep -v '^$' | sort -u | while IFS= read -r line; do
    printf '%s' "$line" > "seeds/trace_line/$(printf '%s' "$line" | sha1sum | cut -c1-16)"
done
cp ../policies/*.toml ../policies/examples/*.toml seeds/policy/
