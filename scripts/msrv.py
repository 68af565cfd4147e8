"""Reads `cargo metadata` on stdin; see scripts/msrv."""
import json
import re
import subprocess
import sys


def version(text):
    return tuple(int(x) for x in text.split("."))


meta = json.load(sys.stdin)
workspace = set(meta["workspace_members"])
declared = {p["rust_version"] for p in meta["packages"] if p["id"] in workspace}
if len(declared) != 1 or None in declared:
    sys.exit(f"every workspace crate must declare the same rust-version, found {declared}")
msrv = declared.pop()
used = {n["id"] for n in meta["resolve"]["nodes"]}
deps = [p for p in meta["packages"]
        if p["id"] in used and p["id"] not in workspace and p["rust_version"]]
too_new = sorted(f"{p['name']} {p['version']} needs {p['rust_version']}"
                 for p in deps if version(p["rust_version"]) > version(msrv))
if too_new:
    sys.exit(f"declared rust-version {msrv}, but:\n  " + "\n  ".join(too_new)
             + "\nraise rust-version in Cargo.toml or pin those dependencies lower")
rustc = re.search(r"(\d+\.\d+\.\d+)",
                  subprocess.check_output(["rustc", "--version"], text=True)).group(1)
if version(rustc) < version(msrv):
    sys.exit(f"rustc {rustc} is older than the declared rust-version {msrv}")
highest = max((p["rust_version"] for p in deps), key=version)
print(f"MSRV {msrv}: every dependency allows it (the highest any needs: {highest}); rustc {rustc}")
