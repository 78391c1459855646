# What the passes with a venv of their own share (sourced by debian_python.sh and
# newest_cffi.sh, from the checkout's root): a scratch copy of the tree, a quiet runner, and the
# stamp that says when the venv's installed package must be built again.

# A scratch folder for the copy of the tree ($work, removed on exit) and a log file ($log).
pass_begin() { # pass_begin NAME
    work=$(mktemp -d "/tmp/bitcoin_support-$1.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    log=$(mktemp)
}

quiet() { # run "$@" silently; show its output if it fails
    if ! "$@" >"$log" 2>&1; then
        cat "$log"
        rm -f "$log"
        exit 1
    fi
}

# The stamp of a build: the output of "$@" (the interpreter or cffi version), then the package's
# sources.
pass_stamp() {
    {
        "$@"
        git ls-files -z --cached --others --exclude-standard -- bitcoin_support cdefs \
            build_ffi.py build_embed.py build_flags.py setup.py pyproject.toml MANIFEST.in |
            sort -z | xargs -0 cat
    } | sha256sum
}

pass_stale() { # pass_stale VENV STAMP: true when the venv was built from other sources
    [ "$(cat "$1/.source-stamp" 2>/dev/null)" != "$2" ]
}

pass_built() { # pass_built VENV STAMP: the venv now holds a build of these sources
    echo "$2" >"$1/.source-stamp"
}

# The tree (tracked and new files) copied into $work.
pass_copy_tree() {
    git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work"
}

# Whatever runs in the copy imports the installed package: only the C header stays (without
# __init__.py the folder cannot shadow the installed package).
pass_installed_only() {
    find "$work/bitcoin_support" -mindepth 1 -maxdepth 1 ! -name include -exec rm -rf {} +
}
