/*
 * sd_notify for Node: one datagram to $NOTIFY_SOCKET, sent from the agent's own process.
 *
 * Node has no unix datagram sockets. Spawning systemd-notify works on systemd >= 246, but before that
 * (Jetson L4T 35 ships 245) systemd attributes a datagram to a unit by the sender's PID, and a helper that has
 * already exited when the message is read is attributed to nothing: READY or a watchdog ping is dropped.
 * Sent from here, the sender is the service's main PID, so even NotifyAccess=main accepts it.
 * MSG_DONTWAIT: if the receiver stops reading, the datagram is dropped (EAGAIN, reported to the caller) rather
 * than blocking the event loop; a lost ping is systemd's to judge, a blocked agent is not.
 *
 * The few Node-API declarations are written out below instead of taken from node_api.h: the ABI is stable
 * (Node-API 8, Node >= 12.22) and the build then needs only a C compiler per target, no Node headers.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status; /* napi_ok is 0 */
typedef napi_value (*napi_callback)(napi_env env, napi_callback_info info);

extern napi_status napi_get_cb_info(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv,
                                    napi_value *this_arg, void **data);
extern napi_status napi_get_value_string_utf8(napi_env env, napi_value value, char *buf, size_t bufsize,
                                              size_t *result);
extern napi_status napi_create_int32(napi_env env, int value, napi_value *result);
extern napi_status napi_create_function(napi_env env, const char *utf8name, size_t length, napi_callback cb,
                                        void *data, napi_value *result);
extern napi_status napi_set_named_property(napi_env env, napi_value object, const char *utf8name,
                                           napi_value value);
extern napi_status napi_throw_type_error(napi_env env, const char *code, const char *msg);

#define MAX_MESSAGE 4096

/* notify(socketPath, message) -> 0, or -errno when the datagram could not be sent. */
static napi_value notify(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
  char message[MAX_MESSAGE + 1];
  size_t path_len = 0, message_len = 0;
  napi_value result;

  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != 0 || argc < 2 ||
      napi_get_value_string_utf8(env, argv[0], path, sizeof(path), &path_len) != 0 ||
      napi_get_value_string_utf8(env, argv[1], message, sizeof(message), &message_len) != 0) {
    napi_throw_type_error(env, NULL, "notify(socketPath: string, message: string)");
    return NULL;
  }
  int rc = 0;
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  /* A path that fills sun_path exactly was truncated by the copy above: refuse rather than send elsewhere. */
  if (path_len == 0 || path_len >= sizeof(addr.sun_path) || message_len >= MAX_MESSAGE) {
    rc = -EINVAL;
  } else {
    memcpy(addr.sun_path, path, path_len);
    /* systemd's convention: a leading '@' names a socket in the abstract namespace. */
    if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';
    socklen_t addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      rc = -errno;
    } else {
      ssize_t sent;
      do {
        sent = sendto(fd, message, message_len, MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&addr, addr_len);
      } while (sent < 0 && errno == EINTR);
      if (sent < 0) rc = -errno;
      close(fd);
    }
  }
  napi_create_int32(env, rc, &result);
  return result;
}

__attribute__((visibility("default"))) int node_api_module_get_api_version_v1(void) { return 8; }

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "notify", 6, notify, NULL, &fn) == 0) {
    napi_set_named_property(env, exports, "notify", fn);
  }
  return exports;
}
