"""The guest's UEFI variable store, made from a template before its first boot.

bhyve opens the ``-l bootrom,CODE,VARS`` file read-write and refuses to start when it
does not exist ("Error opening bootrom variable file"), so a guest defined with
``<nvram>`` needs that file before its first launch. As libvirt does, the supervisor
copies ``<nvram template='...'>`` there, or the firmware package's own variable store
(``BHYVE_UEFI_VARS.fd`` beside the code) when no template is given. An existing file is
never touched: it holds the guest's boot entries.
"""

from __future__ import annotations

import os
import shutil

from supervisor.actors.guest import LaunchPlan
from supervisor.errors import HostNotReadyError
from supervisor.host import Host
from supervisor.log import get_logger

__all__ = ["DEFAULT_VARS_NAME", "NvramHook"]

log = get_logger("bhyvesupd.nvram")

#: The variable store the FreeBSD edk2-bhyve package installs beside its code.
DEFAULT_VARS_NAME = "BHYVE_UEFI_VARS.fd"


class NvramHook:
    """A launch hook that creates a missing ``<nvram>`` file from its template.

    Args:
        host: the host the guests run on.
        firmware_dir: where the default template lives (FreeBSD path).
    """

    def __init__(self, host: Host, firmware_dir: str) -> None:
        self.host = host
        self.firmware_dir = firmware_dir

    def template_for(self, plan: LaunchPlan) -> str | None:
        """The template the guest's variable store is made from (FreeBSD path)."""
        d = plan.domain
        if d is None or d.os.nvram is None:
            return None
        return d.os.nvram_template or f"{self.firmware_dir}/{DEFAULT_VARS_NAME}"

    async def before_launch(self, name: str, plan: LaunchPlan) -> None:
        d = plan.domain
        template = self.template_for(plan)
        if d is None or d.os.nvram is None or template is None:
            return
        target = self.host.path(d.os.nvram)
        if os.path.exists(target):
            return
        source = self.host.path(template)
        if not os.path.isfile(source):
            raise HostNotReadyError(
                f"os.nvram: {d.os.nvram} does not exist and its template {template} is missing "
                "(install the edk2-bhyve package, or give <nvram template='...'>)",
                field="os.nvram",
            )
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # Copy to a temporary name first: a half-written store would be kept forever.
        tmp = f"{target}.tmp{os.getpid()}"
        try:
            shutil.copyfile(source, tmp)
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        log.info("nvram_created", guest=name, path=d.os.nvram, template=template)

    async def after_stop(self, name: str, plan: LaunchPlan) -> None:
        # The variable store outlives every run: it is the guest's, like its disks.
        return None
