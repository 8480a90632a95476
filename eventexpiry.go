package etcdstore

import (
	"cmp"
	"container/heap"
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// An event stream's expiries: the heap of the tracked sessions' expiries,
// and their delivery once a read confirms them (see Session events in
// events.go).

// expiryHeap is a min-heap of tracked sessions, in (expiry, token) order.
type expiryHeap []*tracked

func (h expiryHeap) Len() int { return len(h) }
func (h expiryHeap) Less(i, j int) bool {
	return cmp.Or(h[i].expiry.Compare(h[j].expiry), cmp.Compare(h[i].token, h[j].token)) < 0
}
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].at, h[j].at = i, j
}
func (h *expiryHeap) Push(x any) {
	t := x.(*tracked)
	t.at = len(*h)
	*h = append(*h, t)
}
func (h *expiryHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h, t.at = old[:len(old)-1], -1
	return t
}

// markReported records t's expiry as delivered.
func (st *eventStream) markReported(t *tracked) {
	t.reported = true
	if t.at >= 0 {
		heap.Remove(&st.expiries, t.at)
	}
}

// expiredBy reports whether the expiry of token at expiry was delivered
// before position p.
func expiredBy(expiry time.Time, token string, p Position) bool {
	if c := expiry.Compare(p.Expiry); c != 0 {
		return c < 0
	}
	return token <= p.Token
}

// nextExpiry is how long until the earliest expiry of a session the
// stream tracks and has not reported, at most a minute; a minute while it
// waits for a write to a due session.
func (st *eventStream) nextExpiry() time.Duration {
	if st.stillWaiting() || len(st.expiries) == 0 {
		return time.Minute
	}
	return min(max(st.expiries[0].expiry.Sub(st.s.now()), 0), time.Minute)
}

// stillWaiting reports whether the stream waits for a write to a due
// session (see waiting) that the watch has not brought yet.
func (st *eventStream) stillWaiting() bool {
	if st.waiting != nil && st.live[st.waiting.token] != st.waiting {
		st.waiting = nil // the write came: the session's state changed
	}
	return st.waiting != nil
}

// expire delivers the expiries that have passed, in expiry order, of the
// sessions that no write touched since the one the stream saw: it reads
// their keys first, up to 128 in one Txn. At the first due session whose
// key was written since, or is gone, it stops and waits for the watch to
// bring that write, which tells what became of the session.
func (st *eventStream) expire(ctx context.Context) error {
	if st.stillWaiting() {
		return nil
	}
	now := st.s.now()
	var dues []*tracked
	for len(st.expiries) > 0 && !now.Before(st.expiries[0].expiry) {
		dues = append(dues, heap.Pop(&st.expiries).(*tracked))
	}
	putBack := func(ts []*tracked) {
		for _, t := range ts {
			heap.Push(&st.expiries, t)
		}
	}
	for start := 0; start < len(dues); start += maxTxnOps {
		batch := dues[start:min(start+maxTxnOps, len(dues))]
		gets := make([]clientv3.Op, len(batch))
		for i, t := range batch {
			gets[i] = clientv3.OpGet(st.s.keys.key(t.token), clientv3.WithKeysOnly())
		}
		resp, err := retryValue(st.s.calls, st.s.calls.newCall(ctx), func(ctx context.Context) (*clientv3.TxnResponse, error) {
			return st.s.client.Txn(ctx).Then(gets...).Commit()
		})
		if err != nil {
			putBack(dues[start:]) // confirmed later
			return err
		}
		for i, t := range batch {
			if kvs := resp.Responses[i].GetResponseRange().GetKvs(); len(kvs) == 0 || kvs[0].ModRevision != t.rev {
				st.waiting = t
				putBack(dues[start+i:])
				return nil
			}
			t.reported = true
			st.pos.Expiry, st.pos.Token = t.expiry, t.token
			if err := st.deliver(Event{Kind: EventExpired, Token: t.token, Principal: t.principal, Expiry: t.expiry, Reason: EndExpired, At: t.expiry, Revision: st.pos.Revision}); err != nil {
				putBack(dues[start+i+1:])
				return err
			}
		}
	}
	return nil
}
