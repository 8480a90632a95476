package etcdstore

import (
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// netCommits commits fresh sessions through s from workers goroutines
// until stop, and counts per second of the run the commits that returned
// nil and those that failed, and the calls that took longer than a
// second.
type netCommits struct {
	start      time.Time
	mu         sync.Mutex // protects the slices
	ok, failed []int      // by second since start
	slow       []int      // calls over a second, by the second they began in
	wg         sync.WaitGroup
}

func startNetCommits(s *EtcdStore, workers int, stop <-chan struct{}) *netCommits {
	n := &netCommits{start: time.Now()}
	for w := range workers {
		n.wg.Go(func() {
			for i := range netMaxOps {
				select {
				case <-stop:
					return
				default:
				}
				began := time.Now()
				r := commitOnce(s, fmt.Sprintf("k%02d-%06d", w, i))
				n.record(began, r.err == nil, r.end.Sub(r.start) > time.Second)
			}
		})
	}
	return n
}

func (n *netCommits) record(began time.Time, ok, slow bool) {
	sec := int(began.Sub(n.start) / time.Second)
	n.mu.Lock()
	defer n.mu.Unlock()
	for len(n.ok) <= sec {
		n.ok, n.failed, n.slow = append(n.ok, 0), append(n.failed, 0), append(n.slow, 0)
	}
	switch {
	case ok:
		n.ok[sec]++
	default:
		n.failed[sec]++
	}
	if slow {
		n.slow[sec]++
	}
}

// sum adds up counts from second from to second to, not included.
func sum(counts []int, from, to int) int {
	total := 0
	for i := from; i < to && i < len(counts); i++ {
		total += counts[i]
	}
	return total
}

// TestKeepaliveSkipsDeadEndpoint: one of three client endpoints is
// blackholed for 18 s. A client without keepalive (etcd's default) keeps
// its connection to it, and every request that its balancer sends there
// waits out an attempt's share of the store's timeout; a client with
// DialKeepAliveTime 10 s (gRPC's least: grpc-go keepalive.ClientParameters
// raises a shorter one to it) and DialKeepAliveTimeout 2 s closes that
// connection once a ping goes unanswered, and its balancer then sends
// nothing there: past the first 14 s, none of its calls fails or takes
// over a second. Both run at once, on one cluster, and the test logs their
// commits per second. Before that, a call fails if all its attempts went
// to the dead member, which the client's balancer picks for one request in
// three: rarely, on a loaded machine.
func TestKeepaliveSkipsDeadEndpoint(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("a load of 12 s or more")
	}
	const (
		hold    = 18 // seconds
		workers = 4
		// settled is how many seconds into the hold keepalive has acted:
		// its ping goes 10 s after the last answer, and is given up 2 s
		// later; 12 s in one run, and 2 s to spare on a loaded machine.
		settled = 14
	)
	c := etcdtest.StartCluster(t, 3)
	plain := NewWithPrefix(etcdtest.NewClient(t, clientv3.Config{Endpoints: c.Endpoints()}), faultPrefix(t)+"plain:")
	kept := NewWithPrefix(etcdtest.NewClient(t, clientv3.Config{
		Endpoints:            c.Endpoints(),
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
	}), faultPrefix(t)+"keepalive:")
	dead := (c.Leader() + 1) % len(c.Members)
	stop := make(chan struct{})
	runs := map[string]*netCommits{"no keepalive": startNetCommits(plain, workers, stop), "keepalive 10s/2s": startNetCommits(kept, workers, stop)}
	t.Cleanup(func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		for _, n := range runs {
			n.wg.Wait()
		}
	})
	time.Sleep(2 * time.Second)
	c.ClientProxy(dead).Hold()
	time.Sleep(hold * time.Second)
	c.ClientProxy(dead).Heal()
	time.Sleep(2 * time.Second)
	close(stop)
	for name, n := range runs {
		n.wg.Wait()
		t.Logf("%s: commits per second %v, failed %v, calls over 1 s %v (endpoint held in seconds 2 to %d)", name, n.ok, n.failed, n.slow, 2+hold)
		t.Logf("%s: %d commits before the hold (2 s), %d in its first %d s, %d in its last %d s; %d failed", name,
			sum(n.ok, 0, 2), sum(n.ok, 2, 2+settled), settled, sum(n.ok, 2+settled, 2+hold), hold-settled, sum(n.failed, 0, len(n.failed)))
	}
	after := runs["keepalive 10s/2s"]
	if slow, failed := sum(after.slow, 2+settled, 2+hold), sum(after.failed, 2+settled, len(after.failed)); slow+failed > 0 {
		t.Errorf("with keepalive, %d calls failed and %d took over a second from %d s into the hold: the dead endpoint was not dropped", failed, slow, settled)
	}
}

// TestMinorityMemberFailsOver: a follower is cut off from its peers for
// 8 s while the client, given every member, keeps sending it requests.
// Each request asks for a leader, which the cut-off member no longer has
// once its election timeout passes, so it answers at once and the retry
// goes to another member: no commit fails.
func TestMinorityMemberFailsOver(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("a load of 12 s or more")
	}
	c := etcdtest.StartCluster(t, 3)
	s := NewWithPrefix(c.Client(t), faultPrefix(t))
	cut := (c.Leader() + 1) % len(c.Members)
	stop := make(chan struct{})
	n := startNetCommits(s, 8, stop)
	t.Cleanup(func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		n.wg.Wait()
	})
	time.Sleep(2 * time.Second)
	c.Partition(cut)
	time.Sleep(8 * time.Second)
	c.Heal()
	time.Sleep(2 * time.Second)
	close(stop)
	n.wg.Wait()
	t.Logf("commits per second %v, failed %v, calls over 1 s %v (member %d cut off in seconds 2 to 10)", n.ok, n.failed, n.slow, cut)
	t.Logf("%d commits in the 8 s the member was cut off, %d retries", sum(n.ok, 2, 10), s.Stats().Retries)
	if f := sum(n.failed, 0, len(n.failed)); f > 0 {
		t.Errorf("%d commits failed", f)
	}
}
