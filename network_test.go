package etcdstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// Network faults under load: two app servers, each with its own client
// and store, run committers (each commit after a Find of the session, as
// SCS does), finders and deleters on a shared pool of sessions of a
// 3-member cluster, while a link misbehaves without closing: a member's
// client endpoint is blackholed, or the leader's peer traffic is held.
// Held requests and raft messages are delivered at the heal, late. Then a
// store that remembers nothing reads every session once more. The history
// must be linearizable (porcupine, with the register model of
// linearizability_test.go), with no acknowledged commit lost, no deleted
// session back and no stale read.

const (
	// netBefore, netAfter: the load before the fault and after the heal.
	netBefore = 2 * time.Second
	netAfter  = 3 * time.Second
	// netSettle is how long the test waits after the load, for whatever
	// was held to land, before the final reads.
	netSettle = time.Second
	// netPool is how many sessions the committers keep live.
	netPool = 40
	// netMaxOps bounds the operations of each worker.
	netMaxOps = 20000
	// netOpTimeout bounds each operation, as SCS's request would be.
	netOpTimeout = 5 * time.Second
)

// netPoolOf is the sessions that the workers share: those whose first
// commit was acknowledged and that no delete has ended.
type netPoolOf struct {
	mu     sync.Mutex // protects tokens and next
	tokens []string
	next   int
}

func (p *netPoolOf) newToken() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next++
	return fmt.Sprint("s", p.next)
}

func (p *netPoolOf) add(token string) {
	p.mu.Lock()
	p.tokens = append(p.tokens, token)
	p.mu.Unlock()
}

func (p *netPoolOf) remove(token string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, t := range p.tokens {
		if t == token {
			p.tokens = append(p.tokens[:i], p.tokens[i+1:]...)
			return
		}
	}
}

// pick returns a random token of the pool, and its size; "" when empty.
func (p *netPoolOf) pick(rng *rand.Rand) (string, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.tokens) == 0 {
		return "", 0
	}
	return p.tokens[rng.IntN(len(p.tokens))], len(p.tokens)
}

// netRun is one run's history and what it saw.
type netRun struct {
	h        *regHistory
	pool     netPoolOf
	tokens   sync.Map // every token created, for the final reads
	values   atomic.Int64
	ops      atomic.Int64
	failures atomic.Int64
}

// op runs one operation of client id on s and records it.
func (r *netRun) op(s *EtcdStore, id int, in regInput) (regOutput, error) {
	ctx, cancel := context.WithTimeout(context.Background(), netOpTimeout)
	defer cancel()
	var out regOutput
	var err error
	call := r.h.now()
	switch in.op {
	case regCommit:
		err = s.CommitCtx(ctx, in.token, []byte(in.value), faultExpiry())
	case regDelete:
		err = s.DeleteCtx(ctx, in.token)
	default:
		var b []byte
		b, _, err = s.FindCtx(ctx, in.token)
		out.value = string(b)
	}
	r.h.add(id, in, out, call, err)
	r.ops.Add(1)
	if err != nil {
		r.failures.Add(1)
	}
	return out, err
}

func (r *netRun) value(id int) string {
	return fmt.Sprintf("v%d-%d", id, r.values.Add(1))
}

// committer creates sessions while the pool is short, and otherwise finds
// one and commits a new value of it.
func (r *netRun) committer(s *EtcdStore, id int, rng *rand.Rand, stop <-chan struct{}) {
	for range netMaxOps {
		select {
		case <-stop:
			return
		default:
		}
		token, n := r.pool.pick(rng)
		if n < netPool {
			token = r.pool.newToken()
			r.tokens.Store(token, true)
			if _, err := r.op(s, id, regInput{op: regCommit, token: token, value: r.value(id)}); err == nil {
				r.pool.add(token)
			}
			continue
		}
		if _, err := r.op(s, id, regInput{op: regFind, token: token}); err != nil {
			continue
		}
		r.op(s, id, regInput{op: regCommit, token: token, value: r.value(id)})
	}
}

func (r *netRun) finder(s *EtcdStore, id int, rng *rand.Rand, stop <-chan struct{}) {
	for range netMaxOps {
		select {
		case <-stop:
			return
		default:
		}
		if token, _ := r.pool.pick(rng); token != "" {
			r.op(s, id, regInput{op: regFind, token: token})
		} else {
			time.Sleep(time.Millisecond)
		}
	}
}

// deleter deletes a session of the pool every few milliseconds, as a
// logout does; the workers that picked it before go on with it.
func (r *netRun) deleter(s *EtcdStore, id int, rng *rand.Rand, stop <-chan struct{}) {
	for range netMaxOps {
		select {
		case <-stop:
			return
		case <-time.After(10 * time.Millisecond):
		}
		if token, _ := r.pool.pick(rng); token != "" {
			r.op(s, id, regInput{op: regDelete, token: token})
			r.pool.remove(token)
		}
	}
}

// netLoad runs the load on the two app servers' stores, with fault
// applied after netBefore and healed after hold, and returns the run.
func netLoad(t *testing.T, c *etcdtest.Cluster, apps [2]*EtcdStore, hold time.Duration, fault func(), heal func()) *netRun {
	t.Helper()
	r := &netRun{h: &regHistory{start: time.Now()}}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	id := 0
	for _, s := range apps {
		for _, work := range []func(*EtcdStore, int, *rand.Rand, <-chan struct{}){
			r.committer, r.committer, r.committer, r.committer,
			r.finder, r.finder, r.finder, r.finder,
			r.deleter,
		} {
			rng := rand.New(rand.NewPCG(seed, uint64(id)))
			client := id
			wg.Go(func() { work(s, client, rng, stop) })
			id++
		}
	}
	t.Cleanup(func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	})
	time.Sleep(netBefore)
	before := r.ops.Load()
	fault()
	time.Sleep(hold)
	during := r.ops.Load() - before
	heal()
	time.Sleep(netAfter)
	close(stop)
	wg.Wait()
	t.Logf("%d operations, %d during the %v fault, %d failed (writes of unknown outcome are kept)", r.ops.Load(), during, hold, r.failures.Load())

	time.Sleep(netSettle)
	reader := NewWithPrefix(c.Client(t), apps[0].keys.prefix)
	r.tokens.Range(func(k, _ any) bool {
		r.op(reader, id, regInput{op: regFind, token: k.(string)})
		return true
	})
	return r
}

// netCheck fails the test unless the run's history is linearizable, and
// reports the reads that broke a promise.
func netCheck(t *testing.T, r *netRun, apps [2]*EtcdStore) {
	t.Helper()
	for i, s := range apps {
		st := s.Stats()
		t.Logf("app server %d: %d retries, %d commit conflicts, %d resurrections refused, %d cache reads, %d fallbacks", i, st.Retries, st.CommitConflicts, st.ResurrectionsRefused, st.CacheReads, st.CacheFallbacks)
	}
	v := regViolations(r.h.ops)
	t.Logf("reads: %d stale, %d of a deleted session, %d missing an acknowledged commit", v.stale, v.back, v.lost)
	if v.stale+v.back+v.lost > 0 {
		t.Errorf("%d stale reads, %d deleted sessions back, %d acknowledged commits lost", v.stale, v.back, v.lost)
	}
	checkLinearizable(t, r.h.ops)
}

// regCounts counts the reads of a history that break a promise.
type regCounts struct {
	stale int // a value that an acknowledged commit replaced before the read began
	back  int // a session whose delete was acknowledged before the read began
	lost  int // nothing, after an acknowledged commit and no delete
}

// regViolations counts the finds of ops that read what no linearizable
// store could have given them, by kind. It is a plain reading of the
// history, beside porcupine's check, for the report.
func regViolations(ops []porcupine.Operation) regCounts {
	type token struct {
		commits map[string]porcupine.Operation
		acked   []porcupine.Operation // acknowledged commits
		deletes []porcupine.Operation
		finds   []porcupine.Operation
	}
	byToken := make(map[string]*token)
	for _, op := range ops {
		in := op.Input.(regInput)
		tk := byToken[in.token]
		if tk == nil {
			tk = &token{commits: make(map[string]porcupine.Operation)}
			byToken[in.token] = tk
		}
		switch in.op {
		case regCommit:
			tk.commits[in.value] = op
			if op.Return != unknownReturn {
				tk.acked = append(tk.acked, op)
			}
		case regDelete:
			tk.deletes = append(tk.deletes, op)
		default:
			tk.finds = append(tk.finds, op)
		}
	}
	var n regCounts
	for _, tk := range byToken {
		for _, f := range tk.finds {
			got := f.Output.(regOutput).value
			deletedBefore, deleteCalled := false, false
			for _, d := range tk.deletes {
				deletedBefore = deletedBefore || (d.Return != unknownReturn && d.Return < f.Call)
				deleteCalled = deleteCalled || d.Call < f.Return
			}
			if got == "" {
				for _, w := range tk.acked {
					if w.Return < f.Call && !deleteCalled {
						n.lost++
						break
					}
				}
				continue
			}
			if deletedBefore {
				n.back++
				continue
			}
			x, ok := tk.commits[got]
			if !ok {
				n.stale++
				continue
			}
			for _, w := range tk.acked {
				if w.Input.(regInput).value != got && w.Call > x.Return && w.Return < f.Call {
					n.stale++
					break
				}
			}
		}
	}
	return n
}

// netApps returns the two app servers' stores on c, each with its own
// client of endpoints, the second with the read cache.
func netApps(t *testing.T, c *etcdtest.Cluster, endpoints [2][]string) [2]*EtcdStore {
	t.Helper()
	var apps [2]*EtcdStore
	for i := range apps {
		var opts []Option
		if i == 1 {
			opts = append(opts, WithReadCache())
		}
		apps[i] = NewWithPrefix(etcdtest.NewClient(t, clientv3.Config{Endpoints: endpoints[i]}), faultPrefix(t), opts...)
		t.Cleanup(func() { apps[i].Close() })
	}
	return apps
}

// TestBlackholedEndpointUnderLoad: the leader's client endpoint, which both
// app servers' clients use, stops forwarding for 4 s without closing its
// connections, and delivers what it held at the heal.
func TestBlackholedEndpointUnderLoad(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("a load of 12 s or more")
	}
	c := etcdtest.StartCluster(t, 3)
	apps := netApps(t, c, [2][]string{c.Endpoints(), c.Endpoints()})
	leader := c.Leader()
	p := c.ClientProxy(leader)
	r := netLoad(t, c, apps, 4*time.Second, p.Hold, p.Heal)
	if apps[0].Stats().Retries+apps[1].Stats().Retries == 0 {
		t.Fatal("no request was tried again: the blackhole held nothing")
	}
	netCheck(t, r, apps)
}

// TestPartitionedLeaderUnderLoad: the leader's peer traffic, both ways, is
// held for 8 s, while one app server's client uses every member and the
// other's only the two followers, the majority; the proposals the
// followers forwarded to the old leader, and its messages, are delivered
// at the heal.
func TestPartitionedLeaderUnderLoad(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("a load of 12 s or more")
	}
	c := etcdtest.StartCluster(t, 3)
	leader := c.Leader()
	var majority []string
	for i, m := range c.Members {
		if i != leader {
			majority = append(majority, m.Endpoints()...)
		}
	}
	apps := netApps(t, c, [2][]string{c.Endpoints(), majority})
	r := netLoad(t, c, apps, 8*time.Second, func() { c.Partition(leader) }, c.Heal)
	if now := c.Leader(); now == leader {
		t.Logf("member %d leads again after the heal", leader)
	}
	netCheck(t, r, apps)
}
