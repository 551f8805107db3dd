"""A tiny rule whose action outputs a directory (a tree artifact)."""

def _tree_impl(ctx):
    out = ctx.actions.declare_directory(ctx.label.name)
    ctx.actions.run_shell(
        outputs = [out],
        inputs = ctx.files.srcs,
        arguments = [out.path] + [f.path for f in ctx.files.srcs],
        command = """
set -e
dir="$1"; shift
mkdir -p "$dir/sub/deeper" "$dir/other"
for f in "$@"; do cp "$f" "$dir/"; done
i=0
while [ $i -lt %d ]; do
  echo "file $i" > "$dir/sub/f$i.txt"
  i=$((i+1))
done
echo deep > "$dir/sub/deeper/leaf.txt"
echo keep > "$dir/other/keep.txt"
printf '#!/bin/sh\\necho tree-exec\\n' > "$dir/run.sh"
chmod +x "$dir/run.sh"
""" % ctx.attr.count,
        mnemonic = "MakeTree",
        progress_message = "Making tree %s" % ctx.label,
    )

    # A second action that consumes the directory as an input.
    manifest = ctx.actions.declare_file(ctx.label.name + ".manifest")
    ctx.actions.run_shell(
        outputs = [manifest],
        inputs = [out],
        arguments = [out.path, manifest.path],
        command = "cd \"$1\" && find -L . -type f | LC_ALL=C sort | xargs sha256sum > \"$OLDPWD/$2\"",
        mnemonic = "TreeManifest",
        progress_message = "Listing tree %s" % ctx.label,
    )
    return [DefaultInfo(files = depset([out, manifest]))]

tree = rule(
    implementation = _tree_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = True),
        "count": attr.int(default = 5),
    },
)
