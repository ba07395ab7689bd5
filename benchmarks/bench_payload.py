"""Benchmark: the AnsiballZ payload of every module, against ``ansible.builtin.ping``'s.

A module call sends its payload over the connection (with pipelining, on ssh's stdin)
and the managed host unpacks and compiles whatever of it the module imports, so its size
is a per-host cost of every fleet run. For each module this prints the payload's size,
the share of it that is this collection's code (files, raw and compressed) and which
``module_utils`` it carries. Built the way ansible-playbook builds it (ZIP_DEFLATED, as
``module_compression`` defaults), nothing is run.

    python benchmarks/bench_payload.py [MODULE ...]
"""

from __future__ import annotations

import base64
import io
import re
import sys
import zipfile
from typing import Optional

import _path

_path.setup()

from ansible.executor import module_common  # noqa: E402
from ansible.parsing.dataloader import DataLoader  # noqa: E402
from ansible.plugins.loader import init_plugin_loader, module_loader  # noqa: E402
from ansible.template import Templar  # noqa: E402

MODULES = ("datablock_info", "datablock_diagnose", "datablock_recover", "datablock_cleanup",
           "datablock_validate", "datablock_drill", "ansible.builtin.ping")


def payload(fqcn: str, templar: Templar, module_args: Optional[dict] = None) -> tuple:
    """(bytes sent, the zip inside it), for a call with ``module_args``."""
    ctx = module_loader.find_plugin_with_context(fqcn)
    built = module_common.modify_module(
        module_name=fqcn, module_path=ctx.plugin_resolved_path, module_args=module_args or {},
        templar=templar, task_vars={"ansible_python_interpreter": sys.executable},
        module_compression="ZIP_DEFLATED")
    data = built.b_module_data
    match = re.search(rb"zip_data='([^']*)'", data)
    if match is None:
        raise SystemExit("%s: no zip_data in the AnsiballZ wrapper (ansible-core changed?)"
                         % fqcn)
    return data, zipfile.ZipFile(io.BytesIO(base64.b64decode(match.group(1))))


def main() -> int:
    init_plugin_loader([sys.path[0]])   # _path.setup() put the collection's root first
    templar = Templar(loader=DataLoader())
    names = sys.argv[1:] or list(MODULES)
    print("%-22s %9s %9s   %s" % ("module", "sent", "ours", "module_utils carried"))
    for name in names:
        fqcn = name if "." in name else "pylabhub.recovery." + name
        data, zf = payload(fqcn, templar)
        ours = [i for i in zf.infolist() if "/pylabhub/recovery/" in i.filename]
        utils = sorted(i.filename.rsplit("/", 1)[-1][:-3] for i in ours
                       if "/module_utils/" in i.filename and not i.filename.endswith(
                           "__init__.py"))
        print("%-22s %7.1f KB %7.1f KB   %d files (%.0f KB raw): %s"
              % (name, len(data) / 1e3, sum(i.compress_size for i in ours) * 4 / 3 / 1e3,
                 len(ours), sum(i.file_size for i in ours) / 1e3, " ".join(utils) or "-"))
    print("sent: the AnsiballZ wrapper as the connection carries it (base64 of the deflated "
          "zip); ours: this collection's part of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
