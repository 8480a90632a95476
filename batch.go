package etcdstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Group commit and batched reads.
//
// Each commit is one etcd request and one raft entry, and each Find
// without the read cache one linearizable request: what one request per
// call can do caps the store. So concurrent calls share requests, as
// etcd's maintainers proposed for the client (etcd-io/etcd#7228). While
// fewer requests of its kind are in flight than commitsInFlight (2) or
// readsInFlight (1), a call goes alone, at once, as it would without
// batching; otherwise calls queue, and when a request ends the next
// carries every call queued, within etcd's limits:
//
//   - commits go in one Txn whose operations are one nested Txn per commit
//     (etcd 3.3 and later), each with its own compare, its own puts and its
//     own Else, so each keeps its outcome; all are one raft entry;
//   - reads go in one read-only Txn of Gets, served linearizably with one
//     ReadIndex, one Get a key: reads of one key queued together, such as
//     the Finds of a page's burst of requests with one cookie, ride the
//     first one's Get and each gets its answer. A read joins a request
//     that starts after it began, never one in flight, so it still sees
//     every commit that completed before it began.
//
// etcd's limits (server/etcdserver/api/v3rpc/key.go): --max-txn-ops, 128
// by default, bounds the operations of a Txn, and a nested Txn's own
// count against what its parent leaves (checkTxnRequest), so a batch of
// commits carries at most 64, whose nested Txns hold up to 3 operations;
// no key may be written twice in one Txn, nested ones included
// (checkIntervals), so a second commit of a token waits for the next
// batch, which also keeps the two in order (a store lines up its own
// commits of a token before they reach the batcher: commitline.go); --max-request-bytes, 1.5 MiB
// by default, bounds the request, so a batch carries at most 1 MiB of
// keys and values. A batch etcd refuses for its size or its operations
// halves the limit it broke, for the batches after it.
//
// A batch that fails as a whole (refused, or no answer in time) fails no
// call: each of its calls is made again alone, within its own deadline,
// as without batching, so that one session too large or outside the
// user's permissions fails only its own commit. A request unanswered
// after stalledAfter gives its place in flight to the next. A caller
// whose context ends while it waits in the queue leaves it at once with
// its error; once its request is sent, it waits for it no longer than
// its deadline.

const (
	// maxBatchCommits and maxBatchReads bound the calls of one batch.
	maxBatchCommits = 64
	maxBatchReads   = maxTxnOps
	// maxBatchBytes bounds the keys and values of one batch.
	maxBatchBytes = 1 << 20
	// commitsInFlight and readsInFlight are how many requests of a kind
	// the store has in flight at most before calls queue. A second commit
	// batch gathers and is sent while the first is on its way: two made
	// 128 concurrent commits 1.2 times as fast as one did, and 32 no
	// slower. A second read batch made 32 concurrent reads slower
	// (docs/performance.md).
	commitsInFlight = 2
	readsInFlight   = 1
	// stalledAfter is how long a request holds its place among those in
	// flight. One unanswered by then is taken for stuck (on a leader that
	// is gone, in a stalled connection) rather than busy, as batches take
	// 0.3 to 8 ms on two cores: it still waits for its answer, within its
	// deadline, but the calls queued behind it go at once in the next
	// request, so that one stuck request does not stall every call until
	// its attempt's deadline.
	stalledAfter = 100 * time.Millisecond
)

// batcher gathers concurrent calls of one kind into shared etcd requests
// (see Group commit and batched reads). R is a call's result. It is safe
// for concurrent use by multiple goroutines.
type batcher[R any] struct {
	// alone makes one call by itself; together makes several in one
	// request, giving each its result or the request's error.
	alone    func(ctx context.Context, it *batchItem[R])
	together func(ctx context.Context, items []*batchItem[R])
	counts   *batchStats
	inFlight int           // requests in flight at most
	stall    time.Duration // stalledAfter
	// share lets calls of one key ride one operation (reads); without
	// it, a key's second call waits for the next batch (commits).
	share bool

	mu       sync.Mutex // protects the fields below
	sending  int        // requests in flight
	queue    []*batchItem[R]
	maxItems int // halved when etcd refuses a batch for its operations
	maxBytes int // halved when etcd refuses a batch for its size
}

// batchItem is one call on its way through a batcher.
type batchItem[R any] struct {
	c    call
	key  string      // the key it writes or reads
	size int         // of its keys and values
	op   clientv3.Op // a nested Txn (a commit) or a Get (a read)
	res  R
	err  error
	done chan struct{} // closed once res and err are set, if queued
	// state is itemQueued, itemSent or itemDropped, under the batcher's mu.
	state int
	// riders are the calls of the same key that ride this one's op in
	// its batch (a batcher that shares), given its res and err.
	riders []*batchItem[R]
}

const (
	itemQueued = iota
	itemSent
	itemDropped
)

// batchStats counts the requests that carried more than one call, and
// the calls they carried, riders included, and the batches etcd refused
// as a whole.
type batchStats struct {
	batches, calls, refused atomic.Int64
}

func newBatcher[R any](inFlight, maxItems int, share bool, alone func(context.Context, *batchItem[R]), together func(context.Context, []*batchItem[R])) *batcher[R] {
	return &batcher[R]{alone: alone, together: together, counts: &batchStats{}, inFlight: inFlight, stall: stalledAfter, share: share, maxItems: maxItems, maxBytes: maxBatchBytes}
}

// do makes the call it: alone at once when fewer than b.inFlight
// requests are in flight and none waits, or else in the next batch. Its
// error is the request's, or the call's own context's when it ended
// first.
func (b *batcher[R]) do(it *batchItem[R]) (R, error) {
	b.mu.Lock()
	if b.sending < b.inFlight && len(b.queue) == 0 {
		b.sending++
		b.mu.Unlock()
		ctx, cancel := attemptContext(it.c)
		if b.inPlace(func() { b.alone(ctx, it) }) {
			b.release()
		}
		cancel()
		return it.res, it.err
	}
	it.done = make(chan struct{})
	b.queue = append(b.queue, it)
	if b.sending < b.inFlight {
		b.sending++
		go b.drain()
	}
	b.mu.Unlock()
	timer := time.NewTimer(time.Until(it.c.deadline))
	defer timer.Stop()
	var err error
	select {
	case <-it.done:
		return it.res, it.err
	case <-it.c.ctx.Done():
		err = it.c.ctx.Err()
	case <-timer.C:
		err = context.DeadlineExceeded
	}
	b.mu.Lock()
	if it.state == itemQueued {
		it.state = itemDropped // never sent
	}
	b.mu.Unlock()
	var zero R
	return zero, err
}

// inPlace makes req, a request holding a place among those in flight, and
// frees the place should req still be waiting after b.stall. It reports
// whether req returned first, the place still its own.
func (b *batcher[R]) inPlace(req func()) bool {
	var freed atomic.Bool
	stalled := time.AfterFunc(b.stall, func() {
		if freed.CompareAndSwap(false, true) {
			b.release()
		}
	})
	req()
	if !freed.CompareAndSwap(false, true) {
		return false
	}
	stalled.Stop()
	return true
}

// release frees a place among the requests in flight: the next request
// takes it, carrying the calls queued, if any.
func (b *batcher[R]) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) > 0 {
		go b.drain()
		return
	}
	b.sending--
}

// drain sends the calls queued, batch after batch, until none is left or
// a batch stalls, when another drain takes its place.
func (b *batcher[R]) drain() {
	for {
		b.mu.Lock()
		items := b.takeLocked()
		if len(items) == 0 {
			b.sending--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		kept := b.inPlace(func() { b.send(items) })
		for _, it := range items {
			for _, r := range it.riders {
				r.res, r.err = it.res, it.err
				close(r.done)
			}
			close(it.done)
		}
		if !kept {
			return // another request has the place
		}
	}
}

// takeLocked takes the next batch from the queue: its calls in order, up
// to maxItems and maxBytes (a first call larger than maxBytes goes alone),
// each key once; in a batcher that shares, the key's later calls ride
// its first (riders), and count against neither limit. Calls dropped
// while queued leave the queue. b.mu is held.
func (b *batcher[R]) takeLocked() []*batchItem[R] {
	var items, rest []*batchItem[R]
	keys := make(map[string]*batchItem[R])
	size := 0
	for _, it := range b.queue {
		first := keys[it.key]
		switch {
		case it.state == itemDropped:
		case first != nil && b.share:
			it.state = itemSent
			first.riders = append(first.riders, it)
		case first == nil && len(items) < b.maxItems && (len(items) == 0 || size+it.size <= b.maxBytes):
			it.state = itemSent
			items = append(items, it)
			keys[it.key] = it
			size += it.size
		default:
			rest = append(rest, it)
		}
	}
	clear(b.queue)
	b.queue = rest
	return items
}

// send makes items' calls, together, or alone if there is one, within the
// earliest of their attempts' deadlines, and counts the batch. Riders do
// not shorten it: each waits for its answer no longer than its own
// deadline, and one whose request fails is made again alone.
func (b *batcher[R]) send(items []*batchItem[R]) {
	first := items[0]
	for _, it := range items[1:] {
		if attemptEnd(it.c).Before(attemptEnd(first.c)) {
			first = it
		}
	}
	ctx, cancel := context.WithDeadline(clientv3.WithRequireLeader(context.Background()), attemptEnd(first.c))
	defer cancel()
	calls := len(items)
	for _, it := range items {
		calls += len(it.riders)
	}
	if calls > 1 {
		b.counts.batches.Add(1)
		b.counts.calls.Add(int64(calls))
	}
	if len(items) == 1 {
		b.alone(ctx, items[0])
		return
	}
	b.together(ctx, items)
	if err := items[0].err; err != nil {
		b.counts.refused.Add(1)
		b.narrow(err)
	}
}

// narrow halves the limit that a batch etcd refused for its operations or
// its size broke: the server's --max-txn-ops or --max-request-bytes is
// below the default.
func (b *batcher[R]) narrow(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case errors.Is(err, rpctypes.ErrTooManyOps):
		b.maxItems = max(2, b.maxItems/2)
	case errors.Is(err, rpctypes.ErrRequestTooLarge), status.Code(err) == codes.ResourceExhausted:
		b.maxBytes = max(1<<10, b.maxBytes/2)
	}
}

// attemptEnd is when the next attempt of c ends.
func attemptEnd(c call) time.Time { return c.attemptEnd(time.Now()) }

// attemptContext is the context of the next attempt of c.
func attemptContext(c call) (context.Context, context.CancelFunc) {
	return context.WithDeadline(c.ctx, attemptEnd(c))
}

// batching is the store's batchers (see Group commit and batched reads).
type batching struct {
	commits *batcher[commitResult]
	reads   *batcher[readResult]
}

// newBatching returns the batchers of commits and reads through kv.
func newBatching(kv clientv3.KV) *batching {
	return &batching{
		commits: newBatcher(commitsInFlight, maxBatchCommits, false,
			func(ctx context.Context, it *batchItem[commitResult]) {
				cmps, then, els := it.op.Txn()
				resp, err := kv.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
				if err == nil {
					it.res = resultOf(resp, resp.Header.Revision)
				}
				it.err = err
			},
			func(ctx context.Context, items []*batchItem[commitResult]) {
				resp, err := kv.Txn(ctx).Then(opsOf(items)...).Commit()
				for i, it := range items {
					if it.err = err; err == nil {
						it.res = resultOf((*clientv3.TxnResponse)(resp.Responses[i].GetResponseTxn()), resp.Header.Revision)
					}
				}
			}),
		reads: newBatcher(readsInFlight, maxBatchReads, true,
			func(ctx context.Context, it *batchItem[readResult]) {
				resp, err := kv.Get(ctx, it.key)
				if err == nil {
					it.res = readOf(resp.Kvs, resp.Header.Revision)
				}
				it.err = err
			},
			func(ctx context.Context, items []*batchItem[readResult]) {
				resp, err := kv.Txn(ctx).Then(opsOf(items)...).Commit()
				for i, it := range items {
					if it.err = err; err == nil {
						it.res = readOf(resp.Responses[i].GetResponseRange().GetKvs(), resp.Header.Revision)
					}
				}
			}),
	}
}

// opsOf returns the operations of items.
func opsOf[R any](items []*batchItem[R]) []clientv3.Op {
	ops := make([]clientv3.Op, len(items))
	for i, it := range items {
		ops[i] = it.op
	}
	return ops
}

// readResult is what a read found: the key as etcd holds it, if present,
// and the revision it read at.
type readResult struct {
	kv      storedKV
	present bool
	rev     int64
}

func readOf(kvs []*mvccpb.KeyValue, rev int64) readResult {
	if len(kvs) == 0 {
		return readResult{rev: rev}
	}
	return readResult{kv: kvOf(kvs[0]), present: true, rev: rev}
}
