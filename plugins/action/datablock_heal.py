# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""datablock_heal: heal every block of a host by policy and return its recovery report,
as one task (documented in plugins/modules/datablock_heal.py).

Every task costs the controller a worker process per host, about what a whole ping costs;
the datablock_recovery role used to spend three (its argument check, the heal, the
report). This action runs the one module call (``datablock_recover`` with ``all=true
action=heal``, the operator's forced actions for this host in ``force_refused``) and builds
the report in the same worker with the same function the ``recovery_report`` filter is,
so the report is what the task returns, and ``register`` keeps it (also when the host
fails). Nothing is decided here: the engine healed and judged, the filter words.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.pylabhub.recovery.plugins.filter.reports import (
    force_for_host, recovery_report)

MODULE = "pylabhub.recovery.datablock_recover"

#: The options (the module documents them: plugins/modules/datablock_heal.py).
ARGUMENT_SPEC = dict(
    pattern=dict(type="str"),
    repair=dict(type="bool", default=False),
    force=dict(type="list", elements="dict", default=[], options=dict(
        name=dict(type="str", required=True), slot=dict(type="raw", required=True),
        action=dict(type="str", required=True), host=dict(type="str"),
        reason=dict(type="str"))),
)

#: What the module's result carries for the task's display, kept as they are.
_PASSED_ON = ("diff", "warnings", "deprecations", "exception", "audit")


class ActionModule(ActionBase):
    """Heal every DataBlock of the host (one module call) and return its report."""

    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        host = task_vars.get("inventory_hostname")
        module_args = {"all": True, "action": "heal", "repair": args["repair"],
                       "force_refused": force_for_host(args["force"], host)}
        if args["pattern"]:
            module_args["pattern"] = args["pattern"]
        healed = self._execute_module(module_name=MODULE, module_args=module_args,
                                      task_vars=task_vars)
        self._remove_tmp_path(self._connection._shell.tmpdir)
        result.update(recovery_report(healed, host, check_mode=bool(self._task.check_mode),
                                      allow_repair=args["repair"]))
        result.update({k: healed[k] for k in _PASSED_ON if k in healed})
        # A refusal or an unhealthy block is in the report; an engine error (or no result
        # at all) fails the host.
        if result["errors"]:
            result["failed"] = True
            result["msg"] = "%d block(s) could not be healed: %s" % (
                len(result["errors"]), "; ".join(
                    "%s: %s" % (b["address"], b["error"].get("message"))
                    for b in result["blocks"] if b["error"]))
        return result
