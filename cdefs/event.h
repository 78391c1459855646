/* libevent handles (event.c): the public types of bitcoin_support.h, libevent's flag values and
   the shim's records and functions. */

typedef int EvutilSocket;
typedef struct LibEvent LibEvent;
typedef void (*EventCallback)(LibEvent *ev, void *arg);

struct event_base;

#define EV_TIMEOUT ...
#define EV_READ ...
#define EV_WRITE ...
#define EV_SIGNAL ...
#define EV_PERSIST ...
#define EV_ET ...
#define EV_CLOSED ...
#define EVLOOP_ONCE ...
#define EVLOOP_NONBLOCK ...
#define EVLOOP_NO_EXIT_ON_EMPTY ...
#define EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST ...

const char *event_get_version(void);

/* Records (cdefs/private/event_shim.h); only the fields Python reads or writes are listed. */
typedef struct bs_base {
    int depth;
    int owned;
    struct event_base *base;
    void *py;
    ...;
} bs_base;

struct LibEvent {
    void *py;
    int fired;
    ...;
};

int bs_event_init(void);
bs_base *bs_base_new(int dummy, int flags);
bs_base *bs_base_wrap(struct event_base *base);
void bs_base_release(bs_base *base);
int bs_base_notify(bs_base *base);
int bs_base_wake_fd(bs_base *base);
int bs_base_loop(bs_base *base, int flags);
int bs_base_loopbreak(bs_base *base);
int bs_base_loopexit(bs_base *base, double timeout);
double bs_base_now(bs_base *base);
const char *bs_base_backend(bs_base *base);
int bs_base_got(bs_base *base, int which);

LibEvent *bs_event_new(bs_base *base, int fd, int events, EventCallback c_cb, void *c_arg);
void bs_event_release(LibEvent *ev);
int bs_event_add(LibEvent *ev, double timeout);
int bs_event_del(LibEvent *ev);
int bs_event_active(LibEvent *ev, int what);
int bs_event_pending(LibEvent *ev, int what);

void bs_set_release_probe(int on);
