#!/usr/bin/env python3
"""Writes a man page (roff, man(7) macros) for a Tidemark binary from the JSON
that swift-argument-parser prints with --experimental-dump-help, on stdin.

    tidemark-agent --experimental-dump-help | manpage.py --section 8 --version 0.1.0
"""
import argparse
import json
import sys

SEE_ALSO = ["tidemark-agent(8)", "tidemark-bitmap(8)", "tidemark-server(8)", "tidemarkctl(8)"]
FILES = {
    "tidemark-agent": [("/etc/tidemark/agent.yaml", "configuration (every key, its default and a comment)"),
                       ("/var/lib/tidemark/", "the .hrl change-tracking files (mode 0700)"),
                       ("/var/lib/tidemark/shutdown.seal", "the shutdown seal: armed at an orderly stop, "
                        "sealed by the shutdown hook, merged at the next start"),
                       ("/usr/lib/systemd/system-shutdown/tidemark", "the shutdown hook (runs shutdown-seal)"),
                       ("/run/tidemark/", "locks, the armed seal's copy for the hook, early-attach records"),
                       ("/sys/fs/bpf/tidemark/", "the pinned tracer map and link")],
    "tidemark-server": [("/etc/tidemark/server.yaml", "configuration (every key, its default and a comment)"),
                        ("/var/lib/tidemark/spool/", "the durable spool"),
                        ("/var/lib/tidemark/target/", "the default local-directory target")],
}


def esc(text):
    text = (text or "").replace("\\", "\\e")
    lines = []
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line.replace("-", "\\-"))
    return "\n".join(lines)


def flag(arg):
    names = []
    for n in arg.get("names", []):
        names.append(("-" if n["kind"] == "short" else "--") + n["name"])
    text = ", ".join("\\fB" + esc(n) + "\\fR" for n in names)
    if arg["kind"] == "option":
        text += " \\fI" + esc(arg.get("valueName", "value")) + "\\fR"
    elif arg["kind"] == "positional":
        text = "\\fI" + esc(arg.get("valueName", "arg")) + "\\fR"
    return text


def synopsis(path, cmd):
    parts = ["\\fB" + esc(" ".join(path)) + "\\fR"]
    for a in cmd.get("arguments", []):
        if not a.get("shouldDisplay", True):
            continue
        if len(path) > 1 and a.get("preferredName", {}).get("name") in ("help", "version"):
            continue
        f = flag(a)
        if a.get("isRepeating"):
            f += " ..."
        parts.append("[" + f + "]" if a.get("isOptional") else f)
    if cmd.get("subcommands"):
        parts.append("\\fIsubcommand\\fR")
    return " ".join(parts)


def options(cmd, out, top=True):
    for a in cmd.get("arguments", []):
        if not a.get("shouldDisplay", True):
            continue
        if not top and a.get("preferredName", {}).get("name") in ("help", "version"):
            continue
        out.append(".TP")
        out.append(flag(a))
        text = a.get("abstract", "")
        if a.get("defaultValue") is not None:
            text += " (default: %s)" % a["defaultValue"]
        if a.get("discussion"):
            text += "\n" + a["discussion"] if isinstance(a["discussion"], str) else ""
        out.append(esc(text))


def walk(path, cmd, out):
    for sub in cmd.get("subcommands", []):
        if not sub.get("shouldDisplay", True):
            continue
        p = path + [sub["commandName"]]
        out.append(".SS " + esc(" ".join(p[1:])))
        out.append(synopsis(p, sub))
        out.append(".PP")
        out.append(esc(sub.get("abstract", "")))
        if sub.get("discussion"):
            out.append(".PP")
            out.append(esc(sub["discussion"]))
        options(sub, out, top=False)
        walk(p, sub, out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--section", default="8")
    ap.add_argument("--version", required=True)
    args = ap.parse_args()
    cmd = json.load(sys.stdin)["command"]
    name = cmd["commandName"]
    out = ['.TH "%s" "%s" "" "Tidemark %s" "Tidemark Manual"' % (name.upper(), args.section, esc(args.version)),
           ".SH NAME", "%s \\- %s" % (esc(name), esc(cmd.get("abstract", ""))),
           ".SH SYNOPSIS", synopsis([name], cmd)]
    if cmd.get("discussion"):
        out += [".SH DESCRIPTION", esc(cmd["discussion"])]
    if cmd.get("arguments"):
        out.append(".SH OPTIONS")
        options(cmd, out)
    if cmd.get("subcommands"):
        out.append(".SH COMMANDS")
        walk([name], cmd, out)
    if name in FILES:
        out.append(".SH FILES")
        for path, what in FILES[name]:
            out += [".TP", "\\fI" + esc(path) + "\\fR", esc(what)]
    out += [".SH EXIT STATUS", "0 on success; 1 on an operating error, with one message on standard error "
            "that says what is wrong and what to do; 64 on a usage error.",
            ".SH SEE ALSO", ", ".join(esc(s) for s in SEE_ALSO if not s.startswith(name + "("))]
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
