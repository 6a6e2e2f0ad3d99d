/* advapi32.dll, emulated: the registry, the service manager and the process token, answered
 * from the machine profile (recorded values of a real Npcap install, or of a broken one).
 *
 * Profile keys:
 *   regkey=<path under HKLM>                  the key exists (with no values of its own)
 *   regval=<path>|<name>|<type>|<data>        a value (type 1 REG_SZ, 4 REG_DWORD); implies the key
 *   service.<name>=<state>                    SERVICE_* state number (4 running, 1 stopped);
 *                                             absent: ERROR_SERVICE_DOES_NOT_EXIST
 *   scm=denied                                OpenSCManagerW fails with ERROR_ACCESS_DENIED
 *   elevated=0|1                              TokenElevation of this process
 *
 * Semantics (learn.microsoft.com: winreg.h, winsvc.h, securitybaseapi.h): registry calls
 * return the error code (LSTATUS) and do not set the last error; the others return
 * NULL/FALSE and set it.  Key names compare case-insensitively.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "winemu.h"

#define ENTER int entry_errno_ = errno
#define OK(value) do { errno = entry_errno_; return (value); } while (0)
#define FAIL(code, value) do { winemu_set_last_error(code); errno = (int)(code); return (value); } while (0)

typedef LONG LSTATUS;
typedef void *HKEY;
typedef DWORD REGSAM;
#define HKLM_VALUE 0x80000002u
#define REG_SZ 1
#define REG_DWORD 4
#define TOKEN_ELEVATION_CLASS 20

/* ------------------------------------------------------------------------------------------ */
/* Registry */

struct key {
    int used;
    char path[512];
};
#define KEYS 256
static struct key keys[KEYS];

static void narrow(LPCWSTR in, char *out, size_t size)
{
    size_t n = wcstombs(out, in ? in : L"", size - 1);
    out[n == (size_t)-1 ? 0 : n] = 0;
}

static int key_exists(const char *path)
{
    const char *line;
    for (int i = 0; (line = winemu_profile_nth("regkey", i)) != NULL; i++)
        if (strcasecmp(line, path) == 0)
            return 1;
    size_t length = strlen(path);
    for (int i = 0; (line = winemu_profile_nth("regval", i)) != NULL; i++)
        if (strncasecmp(line, path, length) == 0 && line[length] == '|')
            return 1;
    return 0;
}

/* The index-th value of key *path*: fills name/type/data, returns 0 when there is none. */
static int nth_value(const char *path, DWORD index, char *name, size_t name_size, DWORD *type,
                     const char **data)
{
    const char *line;
    size_t length = strlen(path);
    for (int i = 0; (line = winemu_profile_nth("regval", i)) != NULL; i++) {
        if (strncasecmp(line, path, length) != 0 || line[length] != '|')
            continue;
        if (index-- != 0)
            continue;
        const char *value_name = line + length + 1;
        const char *bar = strchr(value_name, '|');
        if (bar == NULL)
            return 0;
        size_t n = (size_t)(bar - value_name);
        if (n >= name_size)
            n = name_size - 1;
        memcpy(name, value_name, n);
        name[n] = 0;
        *type = (DWORD)strtoul(bar + 1, NULL, 10);
        const char *bar2 = strchr(bar + 1, '|');
        *data = bar2 ? bar2 + 1 : "";
        return 1;
    }
    return 0;
}

static struct key *key_of(HKEY handle)
{
    uintptr_t value = (uintptr_t)handle;
    if (value < 0x1000 || value >= 0x1000 + KEYS)
        return NULL;
    struct key *k = &keys[value - 0x1000];
    return k->used ? k : NULL;
}

EXPORT LSTATUS WINAPI RegOpenKeyExW(HKEY parent, LPCWSTR subkey, DWORD options, REGSAM access,
                                    HKEY *result)
{
    (void)options;
    (void)access;
    /* HKEY_LOCAL_MACHINE is (HKEY)(ULONG_PTR)(LONG)0x80000002: accept it sign-extended or not. */
    if ((uint32_t)(uintptr_t)parent != HKLM_VALUE || result == NULL)
        return ERROR_INVALID_HANDLE;
    char path[512];
    narrow(subkey, path, sizeof path);
    if (!key_exists(path))
        return ERROR_FILE_NOT_FOUND;
    if (winemu_profile_int("registry_denied", 0))
        return ERROR_ACCESS_DENIED;
    for (int i = 0; i < KEYS; i++) {
        if (!keys[i].used) {
            keys[i].used = 1;
            strncpy(keys[i].path, path, sizeof keys[i].path - 1);
            *result = (HKEY)(uintptr_t)(0x1000 + i);
            return ERROR_SUCCESS;
        }
    }
    return ERROR_NOT_ENOUGH_MEMORY;
}

/* Registry keys still open (tests check that readers close what they open). */
EXPORT int winemu_open_keys(void)
{
    int count = 0;
    for (int i = 0; i < KEYS; i++)
        count += keys[i].used;
    return count;
}

EXPORT LSTATUS WINAPI RegCloseKey(HKEY handle)
{
    struct key *k = key_of(handle);
    if (k == NULL)
        return ERROR_INVALID_HANDLE;
    k->used = 0;
    return ERROR_SUCCESS;
}

EXPORT LSTATUS WINAPI RegQueryInfoKeyW(HKEY handle, LPWSTR class_name, LPDWORD class_size,
                                       LPDWORD reserved, LPDWORD subkeys, LPDWORD max_subkey,
                                       LPDWORD max_class, LPDWORD values, LPDWORD max_value_name,
                                       LPDWORD max_value, LPDWORD security, void *last_write)
{
    (void)class_name; (void)reserved; (void)security;
    struct key *k = key_of(handle);
    if (k == NULL)
        return ERROR_INVALID_HANDLE;
    DWORD count = 0, type;
    char name[256];
    const char *data;
    while (nth_value(k->path, count, name, sizeof name, &type, &data))
        count++;
    if (class_size) *class_size = 0;
    if (subkeys) *subkeys = 0;
    if (max_subkey) *max_subkey = 0;
    if (max_class) *max_class = 0;
    if (values) *values = count;
    if (max_value_name) *max_value_name = 255;
    if (max_value) *max_value = 1024;
    if (last_write) memset(last_write, 0, 8);
    return ERROR_SUCCESS;
}

EXPORT LSTATUS WINAPI RegEnumValueW(HKEY handle, DWORD index, LPWSTR name, LPDWORD name_size,
                                    LPDWORD reserved, LPDWORD type, uint8_t *data,
                                    LPDWORD data_size)
{
    (void)reserved;
    struct key *k = key_of(handle);
    if (k == NULL)
        return ERROR_INVALID_HANDLE;
    char value_name[256];
    DWORD value_type;
    const char *text;
    if (!nth_value(k->path, index, value_name, sizeof value_name, &value_type, &text))
        return ERROR_NO_MORE_ITEMS;
    size_t name_length = mbstowcs(NULL, value_name, 0);
    if (name == NULL || name_size == NULL || *name_size < name_length + 1)
        return ERROR_MORE_DATA;
    mbstowcs(name, value_name, name_length + 1);
    *name_size = (DWORD)name_length;
    if (type)
        *type = value_type;
    if (value_type == REG_DWORD) {
        uint32_t number = (uint32_t)strtoul(text, NULL, 0);
        if (data_size) {
            if (data && *data_size < 4)
                return ERROR_MORE_DATA;
            if (data)
                memcpy(data, &number, 4);
            *data_size = 4;
        }
    } else {
        /* REG_SZ: UTF-16LE with its terminator, as the registry stores it. */
        size_t length = mbstowcs(NULL, text, 0);
        DWORD need = (DWORD)((length + 1) * 2);
        if (data_size) {
            if (data && *data_size < need)
                return ERROR_MORE_DATA;
            if (data) {
                wchar_t wide[1024];
                mbstowcs(wide, text, 1023);
                wide[1023] = 0;
                for (size_t i = 0; i <= length && i < 1024; i++) {
                    data[2 * i] = (uint8_t)(wide[i] & 0xFF);
                    data[2 * i + 1] = (uint8_t)((wide[i] >> 8) & 0xFF);
                }
            }
            *data_size = need;
        }
    }
    return ERROR_SUCCESS;
}

/* ------------------------------------------------------------------------------------------ */
/* Service control manager */

typedef struct {
    DWORD dwServiceType, dwCurrentState, dwControlsAccepted, dwWin32ExitCode,
          dwServiceSpecificExitCode, dwCheckPoint, dwWaitHint;
} SERVICE_STATUS;

EXPORT HANDLE WINAPI OpenSCManagerW(LPCWSTR machine, LPCWSTR database, DWORD access)
{
    ENTER;
    (void)access;
    if (machine != NULL || database != NULL)
        FAIL(ERROR_INVALID_PARAMETER, NULL);
    const char *scm = winemu_profile_get("scm");
    if (scm && strcmp(scm, "denied") == 0)
        FAIL(ERROR_ACCESS_DENIED, NULL);
    OK(winemu_handle_new(WINEMU_SCM, 0, 0, 0));
}

EXPORT HANDLE WINAPI OpenServiceW(HANDLE manager, LPCWSTR name, DWORD access)
{
    ENTER;
    (void)access;
    if (winemu_handle_kind(manager) != WINEMU_SCM)
        FAIL(ERROR_INVALID_HANDLE, NULL);
    char service[128], key[160];
    narrow(name, service, sizeof service);
    for (char *c = service; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
    snprintf(key, sizeof key, "service.%s", service);
    int state = winemu_profile_int(key, 0);
    if (state == 0)
        FAIL(ERROR_SERVICE_DOES_NOT_EXIST, NULL);
    OK(winemu_handle_new(WINEMU_SERVICE, 0, 0, (uintptr_t)state));
}

EXPORT BOOL WINAPI QueryServiceStatus(HANDLE service, SERVICE_STATUS *status)
{
    ENTER;
    if (winemu_handle_kind(service) != WINEMU_SERVICE || status == NULL)
        FAIL(ERROR_INVALID_HANDLE, FALSE);
    memset(status, 0, sizeof *status);
    status->dwServiceType = 1;              /* SERVICE_KERNEL_DRIVER */
    status->dwCurrentState = (DWORD)winemu_handle_data(service);
    OK(TRUE);
}

EXPORT BOOL WINAPI CloseServiceHandle(HANDLE handle)
{
    ENTER;
    int kind = winemu_handle_kind(handle);
    if (kind != WINEMU_SCM && kind != WINEMU_SERVICE)
        FAIL(ERROR_INVALID_HANDLE, FALSE);
    winemu_handle_free(handle);           /* frees the slot whatever its kind */
    OK(TRUE);
}

/* ------------------------------------------------------------------------------------------ */
/* The process token */

EXPORT BOOL WINAPI OpenProcessToken(HANDLE process, DWORD access, HANDLE *token)
{
    ENTER;
    (void)access;
    if ((intptr_t)process != -1 || token == NULL)   /* only GetCurrentProcess() is known */
        FAIL(ERROR_INVALID_HANDLE, FALSE);
    *token = winemu_handle_new(WINEMU_TOKEN, 0, 0, 0);
    OK(TRUE);
}

EXPORT BOOL WINAPI GetTokenInformation(HANDLE token, int information_class, void *info,
                                       DWORD length, DWORD *returned)
{
    ENTER;
    if (winemu_handle_kind(token) != WINEMU_TOKEN)
        FAIL(ERROR_INVALID_HANDLE, FALSE);
    if (information_class != TOKEN_ELEVATION_CLASS)
        FAIL(ERROR_INVALID_PARAMETER, FALSE);
    if (returned)
        *returned = 4;
    if (info == NULL || length < 4)
        FAIL(ERROR_INSUFFICIENT_BUFFER, FALSE);
    uint32_t elevated = (uint32_t)winemu_profile_int("elevated", 1);
    memcpy(info, &elevated, 4);
    OK(TRUE);
}
