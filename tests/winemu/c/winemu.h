/* The emulated Windows machine: what the shims share.
 *
 * Test-only code (compiled by tests/winemu at test time, never shipped).  kernel32.so is the
 * core every other shim links against, as every Windows DLL imports kernel32.dll: it owns the
 * handle table (events, tokens, service handles), the per-thread last error, the machine
 * profile (recorded registry values, service states, elevation, adapter quirks) and the
 * emulated kernel's multicast state.
 *
 * Types follow the Windows headers with the host's ABI: on x86-64 Linux, stdcall and cdecl are
 * the same convention, DWORD/BOOL/LONG are 32-bit and HANDLE is pointer-sized, as on Win64.
 * WCHAR is the host's wchar_t, because that is what ctypes' c_wchar_p passes on this host.
 */
#ifndef WINEMU_H
#define WINEMU_H

#include <stddef.h>
#include <stdint.h>
#include <wchar.h>

#define WINAPI
#define EXPORT __attribute__((visibility("default")))

typedef void *HANDLE;
typedef uint32_t DWORD;
typedef int32_t LONG;
typedef int BOOL;
typedef unsigned int UINT;
typedef uint8_t BOOLEAN;
typedef wchar_t WCHAR;
typedef const WCHAR *LPCWSTR;
typedef WCHAR *LPWSTR;
typedef DWORD *LPDWORD;
typedef void *LPVOID;

#define TRUE 1
#define FALSE 0
#define INFINITE 0xFFFFFFFFu
#define WAIT_OBJECT_0 0x00000000u
#define WAIT_TIMEOUT 0x00000102u
#define WAIT_FAILED 0xFFFFFFFFu
#define MAXIMUM_WAIT_OBJECTS 64

#define ERROR_SUCCESS 0
#define ERROR_INVALID_FUNCTION 1
#define ERROR_FILE_NOT_FOUND 2
#define ERROR_ACCESS_DENIED 5
#define ERROR_INVALID_HANDLE 6
#define ERROR_NOT_ENOUGH_MEMORY 8
#define ERROR_GEN_FAILURE 31
#define ERROR_NOT_SUPPORTED 50
#define ERROR_INVALID_PARAMETER 87
#define ERROR_INSUFFICIENT_BUFFER 122
#define ERROR_INVALID_NAME 123
#define ERROR_MORE_DATA 234
#define ERROR_NO_MORE_ITEMS 259
#define ERROR_DEVICE_REMOVED 1617
#define ERROR_SERVICE_DOES_NOT_EXIST 1060
#define ERROR_NO_SYSTEM_RESOURCES 1450
#define ERROR_BAD_UNIT 20

/* Handle kinds in the one table. */
enum winemu_kind { WINEMU_FREE = 0, WINEMU_EVENT, WINEMU_TOKEN, WINEMU_SCM, WINEMU_SERVICE };

/* kernel32.so internals that the other shims use (exported with a winemu_ prefix). */
EXPORT HANDLE winemu_handle_new(int kind, int manual_reset, int signalled, uintptr_t data);
EXPORT int winemu_handle_kind(HANDLE handle);
EXPORT int winemu_handle_count(int kind);
EXPORT uintptr_t winemu_handle_data(HANDLE handle);
EXPORT void winemu_set_last_error(DWORD code);
EXPORT DWORD WINAPI GetLastError(void);
EXPORT void WINAPI SetLastError(DWORD code);         /* sets errno too: see kernel32.c */
EXPORT DWORD WINAPI WaitForSingleObject(HANDLE handle, DWORD ms);
EXPORT void winemu_event_set(HANDLE event);
EXPORT void winemu_event_reset(HANDLE event);
EXPORT int winemu_event_is_set(HANDLE event);
EXPORT void winemu_handle_free(HANDLE event);

/* The machine profile: "key=value" lines from $WINEMU_PROFILE.  get() returns the last value of
 * a key (NULL when absent); nth() walks every value of a repeated key. */
EXPORT const char *winemu_profile_get(const char *key);
EXPORT const char *winemu_profile_nth(const char *key, int index);
EXPORT int winemu_profile_int(const char *key, int fallback);

/* The emulated kernel's multicast state: groups some local socket has joined (ws2_32.so reports
 * them), for the loopback adapter's copy of this host's own multicast. */
EXPORT void winemu_note_member(uint32_t group_be);
EXPORT int winemu_group_primed(uint32_t group_be);

/* Text in the process's string encoding for wpcap: the ANSI code page (emulated: cp1252)
 * until pcap_init(PCAP_CHAR_ENC_UTF_8) is called.  Converts UTF-8 *in* into *out*. */
EXPORT void winemu_to_ansi(const char *in, char *out, size_t size);

#endif
