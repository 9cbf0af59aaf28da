"""The guest model and libvirt domain XML.

:class:`Domain` is a bhyve guest; :func:`parse_domain_xml` and :func:`format_domain_xml`
read and write libvirt's ``<domain type='bhyve'>`` documents.
"""

from supervisor.domain.model import (
    Audio,
    Channel,
    Controller,
    CpuTopology,
    Disk,
    Domain,
    DriveAddress,
    Features,
    Filesystem,
    Graphics,
    Hostdev,
    Input,
    Interface,
    Loader,
    Os,
    PciAddress,
    Rng,
    Serial,
    Sound,
    SupervisorPolicy,
    VcpuPin,
    Video,
)

__all__ = [
    "Audio",
    "Channel",
    "Controller",
    "CpuTopology",
    "Disk",
    "Domain",
    "DriveAddress",
    "Features",
    "Filesystem",
    "Graphics",
    "Hostdev",
    "Input",
    "Interface",
    "Loader",
    "Os",
    "PciAddress",
    "Rng",
    "Serial",
    "Sound",
    "SupervisorPolicy",
    "VcpuPin",
    "Video",
]
