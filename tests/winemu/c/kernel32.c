/* kernel32.dll, emulated: events and waits, handles, last error, the system directory.
 *
 * Semantics follow the Win32 documentation (learn.microsoft.com, synchapi.h / handleapi.h /
 * errhandlingapi.h / sysinfoapi.h), which is what udpcap_ctypes relies on:
 *   - CreateEventW: manual- or auto-reset event; an auto-reset event is cleared by the wait
 *     that it satisfies.
 *   - WaitForMultipleObjects(n, handles, FALSE, ms): the lowest index of a signalled handle
 *     (WAIT_OBJECT_0 + i), WAIT_TIMEOUT after ms, WAIT_FAILED with ERROR_INVALID_PARAMETER for
 *     n == 0 or n > MAXIMUM_WAIT_OBJECTS and ERROR_INVALID_HANDLE for a handle that is not a
 *     waitable object.  A signal never interrupts it (Windows has none): only an event does.
 *   - GetLastError: per thread.  ctypes' use_last_error keeps a private copy per thread; here
 *     ctypes' use_errno does the same with errno, so every call leaves errno as it found it on
 *     success and sets it to the error code on failure (tests/winemu/boot.py maps
 *     ctypes.get_last_error to ctypes.get_errno).
 *   - GetSystemDirectoryW: the path of the machine's System32 (profile key system32).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "winemu.h"

/* ------------------------------------------------------------------------------------------ */
/* Last error */

static __thread DWORD last_error;

EXPORT void winemu_set_last_error(DWORD code)
{
    last_error = code;
}

#define ENTER int entry_errno_ = errno
#define OK(value) do { errno = entry_errno_; return (value); } while (0)
#define FAIL(code, value) do { last_error = (code); errno = (int)(code); return (value); } while (0)

EXPORT DWORD WINAPI GetLastError(void)
{
    return last_error;
}

EXPORT void WINAPI SetLastError(DWORD code)
{
    last_error = code;
    errno = (int)code;
}

/* ------------------------------------------------------------------------------------------ */
/* Handles: one table, values 0x100 + 4 * slot (Windows handles are multiples of four). */

#define SLOTS 8192
#define HANDLE_BASE 0x100

struct slot {
    int kind;
    int manual_reset;
    int signalled;
    uintptr_t data;
};

static struct slot slots[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed;          /* broadcast whenever an event is set */

static void init_cond(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&changed, &attr);
    pthread_condattr_destroy(&attr);
}

static struct slot *slot_of(HANDLE handle)
{
    uintptr_t value = (uintptr_t)handle;
    if (value < HANDLE_BASE || (value - HANDLE_BASE) % 4)
        return NULL;
    value = (value - HANDLE_BASE) / 4;
    if (value >= SLOTS || slots[value].kind == WINEMU_FREE)
        return NULL;
    return &slots[value];
}

EXPORT HANDLE winemu_handle_new(int kind, int manual_reset, int signalled, uintptr_t data)
{
    HANDLE handle = NULL;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < SLOTS; i++) {
        if (slots[i].kind == WINEMU_FREE) {
            slots[i] = (struct slot){kind, manual_reset, signalled, data};
            handle = (HANDLE)(uintptr_t)(HANDLE_BASE + 4 * i);
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return handle;
}

/* Handles still open, of one kind (0: all): for tests that a caller closes what it opens. */
EXPORT int winemu_handle_count(int kind)
{
    int count = 0;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < SLOTS; i++)
        count += slots[i].kind != WINEMU_FREE && (kind == 0 || slots[i].kind == kind);
    pthread_mutex_unlock(&lock);
    return count;
}

EXPORT int winemu_handle_kind(HANDLE handle)
{
    pthread_mutex_lock(&lock);
    struct slot *s = slot_of(handle);
    int kind = s ? s->kind : WINEMU_FREE;
    pthread_mutex_unlock(&lock);
    return kind;
}

EXPORT uintptr_t winemu_handle_data(HANDLE handle)
{
    pthread_mutex_lock(&lock);
    struct slot *s = slot_of(handle);
    uintptr_t data = s ? s->data : 0;
    pthread_mutex_unlock(&lock);
    return data;
}

static int event_change(HANDLE handle, int signalled)
{
    pthread_mutex_lock(&lock);
    struct slot *s = slot_of(handle);
    int ok = s && s->kind == WINEMU_EVENT;
    if (ok) {
        s->signalled = signalled;
        if (signalled)
            pthread_cond_broadcast(&changed);
    }
    pthread_mutex_unlock(&lock);
    return ok;
}

EXPORT void winemu_event_set(HANDLE event) { event_change(event, 1); }
EXPORT void winemu_event_reset(HANDLE event) { event_change(event, 0); }

EXPORT int winemu_event_is_set(HANDLE event)
{
    pthread_mutex_lock(&lock);
    struct slot *s = slot_of(event);
    int set = s && s->kind == WINEMU_EVENT && s->signalled;
    pthread_mutex_unlock(&lock);
    return set;
}

EXPORT void winemu_handle_free(HANDLE event)
{
    pthread_mutex_lock(&lock);
    struct slot *s = slot_of(event);
    if (s)
        s->kind = WINEMU_FREE;
    pthread_cond_broadcast(&changed);      /* a waiter on it must notice */
    pthread_mutex_unlock(&lock);
}

/* ------------------------------------------------------------------------------------------ */
/* Events and waits */

EXPORT HANDLE WINAPI CreateEventW(void *attributes, BOOL manual_reset, BOOL initial_state,
                                  LPCWSTR name)
{
    ENTER;
    if (attributes != NULL || name != NULL)
        FAIL(ERROR_INVALID_PARAMETER, NULL);    /* udpcap_ctypes never names or secures one */
    HANDLE handle = winemu_handle_new(WINEMU_EVENT, manual_reset != 0, initial_state != 0, 0);
    if (handle == NULL)
        FAIL(ERROR_NOT_ENOUGH_MEMORY, NULL);
    OK(handle);
}

EXPORT BOOL WINAPI SetEvent(HANDLE event)
{
    ENTER;
    if (!event_change(event, 1))
        FAIL(ERROR_INVALID_HANDLE, FALSE);
    OK(TRUE);
}

EXPORT BOOL WINAPI ResetEvent(HANDLE event)
{
    ENTER;
    if (!event_change(event, 0))
        FAIL(ERROR_INVALID_HANDLE, FALSE);
    OK(TRUE);
}

EXPORT BOOL WINAPI CloseHandle(HANDLE handle)
{
    ENTER;
    pthread_mutex_lock(&lock);
    struct slot *s = slot_of(handle);
    /* Events, tokens: closable.  Service handles need CloseServiceHandle. */
    int ok = s && (s->kind == WINEMU_EVENT || s->kind == WINEMU_TOKEN);
    if (ok) {
        s->kind = WINEMU_FREE;
        pthread_cond_broadcast(&changed);
    }
    pthread_mutex_unlock(&lock);
    if (!ok)
        FAIL(ERROR_INVALID_HANDLE, FALSE);
    OK(TRUE);
}

EXPORT HANDLE WINAPI GetCurrentProcess(void)
{
    return (HANDLE)(intptr_t)-1;       /* the pseudo handle, as on Windows */
}

static void deadline_after(struct timespec *deadline, DWORD ms)
{
    clock_gettime(CLOCK_MONOTONIC, deadline);
    deadline->tv_sec += ms / 1000;
    deadline->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (deadline->tv_nsec >= 1000000000L) {
        deadline->tv_sec += 1;
        deadline->tv_nsec -= 1000000000L;
    }
}

EXPORT DWORD WINAPI WaitForMultipleObjects(DWORD count, const HANDLE *handles, BOOL wait_all,
                                           DWORD ms)
{
    ENTER;
    if (count == 0 || count > MAXIMUM_WAIT_OBJECTS || handles == NULL)
        FAIL(ERROR_INVALID_PARAMETER, WAIT_FAILED);
    struct timespec deadline;
    if (ms != INFINITE)
        deadline_after(&deadline, ms);
    pthread_mutex_lock(&lock);
    for (;;) {
        struct slot *found[MAXIMUM_WAIT_OBJECTS];
        DWORD ready = 0, first = count;
        for (DWORD i = 0; i < count; i++) {
            found[i] = slot_of(handles[i]);
            if (found[i] == NULL || found[i]->kind != WINEMU_EVENT) {
                pthread_mutex_unlock(&lock);
                FAIL(ERROR_INVALID_HANDLE, WAIT_FAILED);
            }
            if (found[i]->signalled) {
                ready++;
                if (first == count)
                    first = i;
            }
        }
        if (wait_all ? ready == count : ready > 0) {
            /* Satisfying a wait clears auto-reset events (all of them for wait_all). */
            for (DWORD i = wait_all ? 0 : first; i < (wait_all ? count : first + 1); i++)
                if (!found[i]->manual_reset)
                    found[i]->signalled = 0;
            pthread_mutex_unlock(&lock);
            OK(WAIT_OBJECT_0 + (wait_all ? 0 : first));
        }
        if (ms == 0) {
            pthread_mutex_unlock(&lock);
            OK(WAIT_TIMEOUT);
        }
        int rc = ms == INFINITE ? pthread_cond_wait(&changed, &lock)
                                : pthread_cond_timedwait(&changed, &lock, &deadline);
        if (rc == ETIMEDOUT) {
            /* One more look: an event set exactly at the deadline still counts. */
            ms = 0;
        }
    }
}

EXPORT DWORD WINAPI WaitForSingleObject(HANDLE handle, DWORD ms)
{
    return WaitForMultipleObjects(1, &handle, FALSE, ms);
}

/* ------------------------------------------------------------------------------------------ */
/* The machine profile */

static char **profile_keys, **profile_values;
static int profile_count;
static pthread_once_t profile_once = PTHREAD_ONCE_INIT;

static void load_profile(void)
{
    const char *path = getenv("WINEMU_PROFILE");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (f == NULL)
        return;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        char *eq = strchr(line, '=');
        if (line[0] == '#' || eq == NULL)
            continue;
        *eq = 0;
        profile_keys = realloc(profile_keys, sizeof(char *) * (profile_count + 1));
        profile_values = realloc(profile_values, sizeof(char *) * (profile_count + 1));
        profile_keys[profile_count] = strdup(line);
        profile_values[profile_count] = strdup(eq + 1);
        profile_count++;
    }
    fclose(f);
}

EXPORT const char *winemu_profile_get(const char *key)
{
    pthread_once(&profile_once, load_profile);
    const char *value = NULL;
    for (int i = 0; i < profile_count; i++)
        if (strcmp(profile_keys[i], key) == 0)
            value = profile_values[i];
    return value;
}

EXPORT const char *winemu_profile_nth(const char *key, int index)
{
    pthread_once(&profile_once, load_profile);
    for (int i = 0; i < profile_count; i++)
        if (strcmp(profile_keys[i], key) == 0 && index-- == 0)
            return profile_values[i];
    return NULL;
}

EXPORT int winemu_profile_int(const char *key, int fallback)
{
    const char *value = winemu_profile_get(key);
    return value && *value ? (int)strtol(value, NULL, 0) : fallback;
}

/* ------------------------------------------------------------------------------------------ */
/* System directory */

EXPORT UINT WINAPI GetSystemDirectoryW(LPWSTR buffer, UINT size)
{
    ENTER;
    const char *dir = winemu_profile_get("system32");
    if (dir == NULL)
        FAIL(ERROR_FILE_NOT_FOUND, 0);
    size_t length = mbstowcs(NULL, dir, 0);
    if (length == (size_t)-1)
        FAIL(ERROR_INVALID_PARAMETER, 0);
    if (buffer == NULL || size < length + 1)
        OK((UINT)(length + 1));         /* the size needed, including the terminator */
    mbstowcs(buffer, dir, length + 1);
    OK((UINT)length);
}

/* ------------------------------------------------------------------------------------------ */
/* Multicast membership seen by the emulated kernel */

#define MAX_GROUPS 1024
static uint32_t primed[MAX_GROUPS];
static int primed_count;

EXPORT void winemu_note_member(uint32_t group_be)
{
    pthread_mutex_lock(&lock);
    int known = 0;
    for (int i = 0; i < primed_count; i++)
        known |= primed[i] == group_be;
    if (!known && primed_count < MAX_GROUPS)
        primed[primed_count++] = group_be;
    pthread_mutex_unlock(&lock);
}

EXPORT int winemu_group_primed(uint32_t group_be)
{
    pthread_mutex_lock(&lock);
    int known = 0;
    for (int i = 0; i < primed_count; i++)
        known |= primed[i] == group_be;
    pthread_mutex_unlock(&lock);
    return known;
}

/* ------------------------------------------------------------------------------------------ */
/* The ANSI code page (cp1252 on the emulated machine) */

EXPORT void winemu_to_ansi(const char *in, char *out, size_t size)
{
    /* UTF-8 -> cp1252 for U+0000..U+00FF (identical to Latin-1 there except 0x80..0x9F,
     * which we never produce); anything else becomes '?', as WideCharToMultiByte does. */
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)in;
    while (*p && o + 1 < size) {
        unsigned code;
        if (p[0] < 0x80) {
            code = *p++;
        } else if ((p[0] & 0xE0) == 0xC0 && p[1]) {
            code = ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
            p += 2;
        } else {
            p++;
            while ((*p & 0xC0) == 0x80)
                p++;
            code = '?';
        }
        out[o++] = (char)(code < 0x100 && (code < 0x80 || code >= 0xA0) ? code : '?');
    }
    out[o] = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The console's Ctrl-C event.  CPython on Windows sets an event from its SIGINT handler
 * (_PyOS_SigintEvent) and adds it to the waits it makes on the main thread.  Here CPython's
 * SIGINT handler writes the signal number to the wakeup fd that boot.py registers
 * (signal.set_wakeup_fd): a thread of ours turns that byte into SetEvent, as CPython's handler
 * does on Windows. */

static HANDLE sigint_event;
static int sigint_pipe[2] = {-1, -1};

static void *sigint_thread(void *unused)
{
    (void)unused;
    unsigned char byte;
    for (;;) {
        ssize_t n = read(sigint_pipe[0], &byte, 1);
        if (n == 1 && byte == SIGINT)
            winemu_event_set(sigint_event);
        else if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
            return NULL;
    }
}

/* Returns the write end for signal.set_wakeup_fd (non-blocking), creating it once. */
EXPORT int winemu_sigint_wakeup_fd(void)
{
    pthread_mutex_lock(&lock);
    if (sigint_pipe[1] < 0 && pipe(sigint_pipe) == 0) {
        fcntl(sigint_pipe[1], F_SETFL, O_NONBLOCK);
        fcntl(sigint_pipe[0], F_SETFD, FD_CLOEXEC);
        fcntl(sigint_pipe[1], F_SETFD, FD_CLOEXEC);
        pthread_mutex_unlock(&lock);
        sigint_event = winemu_handle_new(WINEMU_EVENT, 1, 0, 0);
        pthread_t thread;
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);   /* signals go to CPython's threads */
        pthread_create(&thread, NULL, sigint_thread, NULL);
        pthread_detach(thread);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return sigint_pipe[1];
    }
    pthread_mutex_unlock(&lock);
    return sigint_pipe[1];
}

EXPORT HANDLE winemu_sigint_event(void)
{
    winemu_sigint_wakeup_fd();
    return sigint_event;
}

__attribute__((constructor)) static void kernel32_init(void)
{
    init_cond();
}
