#!/usr/bin/env python3
"""Regenerates the README's example output from the current binary.

Every ```console block right after a line `<!-- example -->` (or `<!-- example: SETUP -->`, SETUP
being shell commands run quietly first) is re-run: each `$ COMMAND` line runs with bash in one
scratch folder (build/readme-examples, fixtures from scripts/make_fixtures.py copied in, `ttq` on
PATH), and the lines after it become the command's standard output. Blocks share the folder, in
order, so later examples use earlier outputs.

  scripts/update_readme.py           rewrite README.md in place
  scripts/update_readme.py --check   exit 1 when an example's output no longer has the README's
                                     shape: the same lines and words, numbers, sparklines and the
                                     column padding around them aside (they vary with the machine's
                                     floating point and timing)
"""
import difflib
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
BUILD = os.environ.get("TTQ_BUILD_DIR", os.path.join(ROOT, "build"))
WORK = os.path.join(BUILD, "readme-examples")
MARKER = re.compile(r"^<!-- example(?::\s*(.*?))?\s*-->$")


def prepare():
    shutil.rmtree(WORK, ignore_errors=True)
    fixtures = os.path.join(BUILD, "tests", "fixtures")
    if not os.path.exists(os.path.join(fixtures, "small_cnn.pt")):
        subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "scripts", "make_fixtures.py"), fixtures], check=True,
                       stdout=subprocess.DEVNULL)
    shutil.copytree(fixtures, WORK)


def run(command, quiet=False):
    env = dict(os.environ, PATH=BUILD + os.pathsep + os.environ["PATH"], NO_COLOR="1")
    r = subprocess.run(["bash", "-c", command], cwd=WORK, env=env, capture_output=True, text=True)
    if r.returncode not in (0, 1) or (quiet and r.returncode):
        sys.exit(f"update_readme: '{command}' exited {r.returncode}:\n{r.stderr}")
    return r.stdout


def regenerate(lines):
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        marker = MARKER.match(line.strip())
        if not marker or i >= len(lines) or lines[i].strip() != "```console":
            continue
        if marker.group(1):
            run(marker.group(1), quiet=True)
        out.append(lines[i])
        i += 1
        while lines[i].strip() != "```":
            if lines[i].startswith("$ "):
                out.append(lines[i])
                command = lines[i][2:].split("  #")[0]
                out.extend(run(command).splitlines())
            i += 1
        out.append(lines[i])
        i += 1
    return out


def shape(text):
    text = re.sub(r"[-+]?\d+(\.\d+)?([eE][-+]?\d+)?", "N", text)
    text = re.sub(r"[▁▂▃▄▅▆▇█]+", "S", text)
    return re.sub(r"(?<=\S) {2,}", "  ", text)  # column padding follows the numbers' widths


def main():
    prepare()
    with open(README) as f:
        current = f.read()
    updated = "\n".join(regenerate(current.splitlines())) + "\n"
    if "--check" in sys.argv[1:]:
        if shape(updated) != shape(current):
            diff = difflib.unified_diff(shape(current).splitlines(), shape(updated).splitlines(), "README.md",
                                        "current binary", lineterm="", n=1)
            sys.exit("\n".join(diff) + "\nupdate_readme: README.md is out of date; run scripts/update_readme.py")
        return
    with open(README, "w") as f:
        f.write(updated)


if __name__ == "__main__":
    main()
