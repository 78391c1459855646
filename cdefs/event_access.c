/*
 * event_access.c - the accessors of bitcoin_support.h that read a LibEvent record from C (an
 * EventCallback's first argument). Compiled into both the Python module and the embeddable
 * library (build_embed.py), from the one definition of the record in event.h.
 */
#include "bitcoin_support.h"
#include "event.h"

BS_EXPORT EvutilSocket bs_event_fd(const LibEvent *ev)
{
    return (ev == NULL || ev->ev == NULL) ? -1 : (EvutilSocket)event_get_fd(ev->ev);
}

BS_EXPORT short bs_event_fired(const LibEvent *ev)
{
    return ev == NULL ? 0 : (short)ev->fired;
}

BS_EXPORT struct event *bs_event_get(const LibEvent *ev)
{
    return ev == NULL ? NULL : ev->ev;
}

BS_EXPORT struct event_base *bs_event_get_base(const LibEvent *ev)
{
    return (ev == NULL || ev->ev == NULL) ? NULL : event_get_base(ev->ev);
}
