#!/usr/bin/env python3
"""Check deploy/Containerfile against the repository, without building it.

No container engine is needed: the instructions are read as text and checked for
what broke the image before (a COPY of a file the build context does not hold):
  - every COPY source without --from exists in the build context (the repository
    root) and is not excluded by .dockerignore;
  - every COPY --from names an earlier stage;
  - every stage is Debian bookworm, so the binary links the glibc it runs with;
  - the runtime stage installs the packages whose tools the node service runs,
    and has the binary as its entrypoint.
Exits 1 if anything failed.
"""

import argparse
import fnmatch
import pathlib
import shlex
import sys

# The tools the node service runs inside its container, by the Debian package that
# ships them.
RUNTIME_PACKAGES = {
    "util-linux": "nsenter, blkid, blockdev",
    "mount": "mount, umount",
    "e2fsprogs": "mkfs.ext4, resize2fs",
    "xfsprogs": "mkfs.xfs, xfs_growfs",
    "btrfs-progs": "mkfs.btrfs, btrfs",
}


def instructions(text):
    """(keyword, arguments) per instruction, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in joined]


def ignored(path, patterns):
    return any(fnmatch.fnmatch(path, p.rstrip("/")) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("containerfile", type=pathlib.Path)
    parser.add_argument("--context", type=pathlib.Path, required=True)
    args = parser.parse_args()

    ignore_file = args.context / ".dockerignore"
    patterns = [line.strip() for line in ignore_file.read_text().splitlines()
                if line.strip() and not line.startswith("#")] if ignore_file.exists() else []
    problems, stages, runtime = [], [], {"packages": set(), "entrypoint": None}
    for keyword, rest in instructions(args.containerfile.read_text()):
        words = shlex.split(rest)
        if keyword == "FROM":
            image = words[0]
            if "bookworm" not in image:
                problems.append(f"FROM {image}: not Debian bookworm")
            stages.append(words[2] if len(words) == 3 and words[1].upper() == "AS" else None)
            runtime = {"packages": set(), "entrypoint": None}
        elif keyword == "COPY":
            options = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            source_stage = next((o.split("=", 1)[1] for o in options if o.startswith("--from=")), None)
            if source_stage is not None:
                if source_stage not in stages[:-1]:
                    problems.append(f"COPY --from={source_stage}: no earlier stage of that name {stages[:-1]}")
                continue
            for source in paths[:-1]:
                if not (args.context / source).exists():
                    problems.append(f"COPY {source}: not in the build context {args.context}")
                elif ignored(source, patterns):
                    problems.append(f"COPY {source}: excluded by .dockerignore")
        elif keyword == "RUN" and "apt-get install" in rest:
            runtime["packages"] |= {w for w in words if not w.startswith("-") and w not in
                                    ("apt-get", "install", "update", "&&", "rm", "/var/lib/apt/lists/*")}
        elif keyword == "ENTRYPOINT":
            runtime["entrypoint"] = rest
    missing = {p: tools for p, tools in RUNTIME_PACKAGES.items() if p not in runtime["packages"]}
    if missing:
        problems.append(f"the runtime stage lacks packages: {missing}")
    if "zfs-csi" not in (runtime["entrypoint"] or ""):
        problems.append(f"the runtime stage's entrypoint is not zfs-csi: {runtime['entrypoint']}")

    for problem in problems:
        print(f"  FAIL  {args.containerfile}: {problem}")
    if not problems:
        print(f"  ok    {args.containerfile}: {len(stages)} bookworm stages, COPY sources in the context "
              f"{args.context.resolve()}, runtime packages {sorted(RUNTIME_PACKAGES)}")
    print(f"containerfile: {0 if problems else 1} passed, {1 if problems else 0} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
