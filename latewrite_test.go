package etcdstore_test

import (
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/faultproxy"
)

// Late writes: an attempt held in a stalled connection while the store's
// retry went through another and was acknowledged, then delivered once
// the link heals, as TCP retransmission delivers it. Whatever it finds
// when it lands, it must change nothing: not bring back a session deleted
// since (a logout), nor overwrite a newer acknowledged commit.
//
// One member is reached through two proxies, A and B, both given to the
// app server's client; the client's balancer sends each request to the
// next of them in turn. A holds; a commit whose first attempt went into A
// (the store counts a retry) got its answer through B. Then another app
// server, with a client of its own, deletes the session or commits a newer
// one, and A heals.

const (
	// lateTrials is how many commits must have had an attempt held.
	lateTrials = 8
	// lateTries bounds the commits tried to get them: about half send their
	// first attempt through B, which answers at once.
	lateTries = 5 * lateTrials
	// lateTimeout is the app server's WithTimeout: an attempt gets a
	// fifth of it (600 ms) before the store tries again, and the retry
	// through B as long again, time enough on a loaded machine.
	lateTimeout = 3 * time.Second
	// lateLanding bounds the wait for the held attempt to reach etcd
	// after the heal; one whose stream the client canceled may never do.
	lateLanding = time.Second
	// lateRetryPause is the pause after a try whose attempts all went
	// through B: the 40 tries span 10 s, gRPC's reconnect backoff (1 s, growing by 1.6 a time) four times over.
	lateRetryPause = 250 * time.Millisecond
)

// lateRig is the test's member, the two links to it, the app server whose
// client uses both, and another app server.
type lateRig struct {
	srv   *etcdtest.Server
	a, b  *faultproxy.Proxy
	store *etcdstore.EtcdStore // through A and B
	other *etcdstore.EtcdStore // a client of its own, straight to the member
	check *etcdstore.EtcdStore // a third, that remembers nothing of the tokens
	// expiry is every session's: one lease bucket, granted before the
	// trials, so that a held attempt holds the commit's Txn, not a grant.
	expiry time.Time
}

func newLateRig(t *testing.T) *lateRig {
	t.Helper()
	srv := etcdtest.Start(t, etcdtest.Own())
	r := &lateRig{srv: srv, a: srv.Proxy(t), b: srv.Proxy(t), expiry: time.Now().Add(time.Hour)}
	u, v := r.a.URL(), r.b.URL()
	client := etcdtest.NewClient(t, clientv3.Config{Endpoints: []string{u.String(), v.String()}})
	prefix := "late:" + t.Name() + ":"
	r.store = etcdstore.NewWithPrefix(client, prefix, etcdstore.WithTimeout(lateTimeout))
	r.other = etcdstore.NewWithPrefix(srv.Client(t), prefix)
	r.check = etcdstore.NewWithPrefix(srv.Client(t), prefix)
	// Warm up: the lease of the bucket, and a connection through each
	// link.
	for i := range 4 {
		r.mustCommit(t, r.store, fmt.Sprint("warm", i), "warm")
	}
	return r
}

func (r *lateRig) mustCommit(t *testing.T, s *etcdstore.EtcdStore, token, value string) {
	t.Helper()
	if err := s.Commit(token, []byte(value), r.expiry); err != nil {
		t.Fatalf("Commit(%q, %q): %v", token, value, err)
	}
}

// heldCommit commits token with A held, and reports whether an attempt
// went into A: the store tried again. A stays held.
func (r *lateRig) heldCommit(t *testing.T, token, value string) (held bool) {
	t.Helper()
	before := r.store.Stats().Retries
	r.a.Hold()
	start := time.Now()
	r.mustCommit(t, r.store, token, value)
	held = r.store.Stats().Retries > before
	if held {
		t.Logf("commit of %q acknowledged after %v, an attempt held", token, time.Since(start).Round(time.Millisecond))
	} else {
		// The balancer sends requests only to the links it has up; on a
		// loaded machine the link through A may be down for gRPC's
		// reconnect backoff (1 s at first), and tries without a pause
		// would all go through B before it is back.
		time.Sleep(lateRetryPause)
	}
	return held
}

// heal heals A and waits until the member has applied something after
// it, the held attempt presumably, or lateLanding has passed.
func (r *lateRig) heal(t *testing.T) {
	t.Helper()
	applied := r.srv.AppliedIndex()
	r.a.Heal()
	deadline := time.Now().Add(lateLanding)
	for r.srv.AppliedIndex() == applied && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// The applied entry may be the held one's lease grant or an
	// unrelated one; give a Txn behind it a moment.
	time.Sleep(20 * time.Millisecond)
}

// find returns what check finds of token, "" for nothing.
func (r *lateRig) find(t *testing.T, token string) string {
	t.Helper()
	b, found, err := r.check.Find(token)
	if err != nil {
		t.Fatalf("Find(%q): %v", token, err)
	}
	if !found {
		return ""
	}
	return string(b)
}

// TestLateCreateAfterLogout: a new session's commit, acknowledged with its
// first attempt held, then deleted by another app server: the held
// attempt lands after the delete and must not bring the session back.
func TestLateCreateAfterLogout(t *testing.T) {
	t.Parallel()
	r := newLateRig(t)
	trials, back := 0, 0
	for try := 0; try < lateTries && trials < lateTrials; try++ {
		token := fmt.Sprint("new", try)
		if !r.heldCommit(t, token, "logged-in") {
			r.a.Heal()
			continue
		}
		trials++
		if err := r.other.Delete(token); err != nil {
			t.Fatalf("Delete(%q): %v", token, err)
		}
		r.heal(t)
		if got := r.find(t, token); got != "" {
			back++
			t.Errorf("trial %d: session %q deleted after its commit was acknowledged, then found %q once the held attempt landed", trials, token, got)
		}
	}
	t.Logf("%d of %d logged-out sessions back after a held attempt landed", back, trials)
	if trials < lateTrials {
		t.Fatalf("only %d of %d commits had an attempt held", trials, lateTries)
	}
}

// TestLateUpdateAfterNewerCommit: a session at v1; a commit of v2,
// acknowledged with its first attempt held; another app server reads v2
// and commits v3, as the user's next request would: the held attempt lands
// after v3 and must not put v2 back.
func TestLateUpdateAfterNewerCommit(t *testing.T) {
	t.Parallel()
	r := newLateRig(t)
	trials, lost := 0, 0
	for try := 0; try < lateTries && trials < lateTrials; try++ {
		token := fmt.Sprint("upd", try)
		r.mustCommit(t, r.store, token, "v1")
		if !r.heldCommit(t, token, "v2") {
			r.a.Heal()
			// One request more, so that the next v2 goes to the other
			// link than this one did.
			r.store.Find(token)
			continue
		}
		trials++
		if b, found, err := r.other.Find(token); err != nil || !found || string(b) != "v2" {
			t.Fatalf("other app server's Find(%q) = %q, %v, %v; want the acknowledged v2", token, b, found, err)
		}
		r.mustCommit(t, r.other, token, "v3")
		r.heal(t)
		if got := r.find(t, token); got != "v3" {
			lost++
			t.Errorf("trial %d: session %q holds %q once the held attempt landed, want the acknowledged v3", trials, token, got)
		}
	}
	t.Logf("%d of %d acknowledged updates undone by a held attempt", lost, trials)
	if trials < lateTrials {
		t.Fatalf("only %d of %d commits had an attempt held", trials, lateTries)
	}
}
