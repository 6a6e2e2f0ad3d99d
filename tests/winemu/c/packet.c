/* Packet.dll, emulated: the diagnostics udpcap_ctypes reads (Common/Packet32.h,
 * packetWin7/Dll/Packet32.cpp).  Versions come from the profile (packet_version,
 * driver_version); the driver version is the driver's own answer when it runs, and the
 * npcap.sys file version (Packet.dll reads it in DllMain) when it does not.
 */
#include <string.h>
#include <strings.h>

#include "npf.h"

EXPORT const char *PacketGetVersion(void)
{
    const char *version = winemu_profile_get("packet_version");
    return version ? version : "1.87";
}

EXPORT const char *PacketGetDriverVersion(void)
{
    const char *version = winemu_profile_get("driver_version");
    if (winemu_profile_int("service.npcap", 4) != 4)
        return PacketGetVersion();             /* the file version, not the driver's answer */
    return version ? version : "1.87.203";
}

EXPORT const char *PacketGetDriverName(void)
{
    return "NPCAP";                            /* WpcapNames.h NPF_DRIVER_NAME */
}

EXPORT BOOLEAN PacketIsLoopbackAdapter(const char *name)
{
    return name != NULL && strcasecmp(name, npf_loopback_name()) == 0;
}
