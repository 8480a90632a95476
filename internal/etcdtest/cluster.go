package etcdtest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver"

	"github.com/etcdstore/etcdstore/internal/faultproxy"
)

// Cluster timing. A member that hears nothing from the leader for an
// election timeout (randomised by raft between 1x and 2x) calls an
// election, so a lost leader is replaced in about a second instead of the
// two etcd's defaults (100 ms, 1000 ms) would take. The minimum lease TTL
// follows from it: ceil(1.5 x election timeout) = 1 s
// (server/etcdserver/server.go, MinLeaseTTL).
const (
	clusterTickMs     = 50
	clusterElectionMs = 500
)

const (
	// leaderTimeout bounds how long Leader waits for the members to agree
	// on a leader.
	leaderTimeout = 30 * time.Second
	// bindAttempts bounds how often a member is started on fresh ports
	// after another process took one of those it was given.
	bindAttempts = 5
)

// Cluster is a multi-member etcd cluster in one process: real members
// talking raft over loopback. Its methods are meant for the test
// goroutine: they are not safe for concurrent use.
//
// Each member's client and peer URLs are served by proxies that the
// cluster holds from start to end and that forward to the ports the member
// listens on. So a member's URLs never change, though its ports may: if
// another process takes a port a member was given before it binds it,
// which loopback ports found free a moment earlier allow, the member
// starts again on others. And stopping a member cuts every connection to
// it at once, as a crash would; without that, a peer connection can
// outlive its member by up to etcd's 5 s peer read timeout (an HTTP
// keep-alive connection whose read deadline etcd's listener re-arms),
// which the goroutine-leak check at the end of the tests reports.
type Cluster struct {
	tb testing.TB
	// Members gives access to each member's configuration and server; a
	// member's Etcd is nil while it is stopped. Stop and start members
	// with the Cluster's methods, not the Server's, which know nothing of
	// the proxies.
	Members []*Server

	clients, peers []*faultproxy.Proxy // each member's
}

// StartCluster starts an n-member cluster on loopback, each member's data
// in its own directory under tb.TempDir(), and stops it when the test
// ends. The options apply to every member, after the cluster's defaults
// (fsync off, a 50 ms heartbeat and a 500 ms election timeout).
func StartCluster(tb testing.TB, n int, opts ...Option) *Cluster {
	tb.Helper()
	if External() {
		tb.Skipf("needs a cluster of its own, and %s points at a shared server", EndpointsEnv)
	}
	if n < 1 {
		tb.Fatalf("etcdtest: cluster of %d members", n)
	}
	c := &Cluster{tb: tb}
	tb.Cleanup(c.stopAll)
	token := "cluster-" + strings.ReplaceAll(tb.Name(), "/", "-")
	var initial []string
	for i := range n {
		cfg := Config(tb, fmt.Sprintf("m%d", i), tb.TempDir())
		cfg.InitialClusterToken = token
		cfg.TickMs = clusterTickMs
		cfg.ElectionMs = clusterElectionMs
		cp, err := faultproxy.New(cfg.ListenClientUrls[0].Host)
		if err != nil {
			tb.Fatalf("etcdtest: client proxy for %s: %v", cfg.Name, err)
		}
		c.clients = append(c.clients, cp)
		pp, err := faultproxy.New(cfg.ListenPeerUrls[0].Host, faultproxy.WithLabel(peerLabel))
		if err != nil {
			tb.Fatalf("etcdtest: peer proxy for %s: %v", cfg.Name, err)
		}
		c.peers = append(c.peers, pp)
		cfg.AdvertiseClientUrls = []url.URL{cp.URL()}
		cfg.AdvertisePeerUrls = []url.URL{pp.URL()}
		c.Members = append(c.Members, &Server{tb: tb, Cfg: cfg})
		initial = append(initial, cfg.Name+"="+cfg.AdvertisePeerUrls[0].String())
	}
	for _, m := range c.Members {
		m.Cfg.InitialCluster = strings.Join(initial, ",")
		for _, opt := range opts {
			opt(m.Cfg)
		}
	}

	// A member is ready only once a leader is elected and it has
	// published itself through raft, which needs a quorum of the others:
	// start them all at once.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range c.Members {
		wg.Go(func() { errs[i] = c.start(i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		tb.Fatalf("etcdtest: start cluster: %v", err)
	}
	return c
}

// start starts member i and waits until it is ready, on fresh listening
// ports whenever one it was given turns out taken.
func (c *Cluster) start(i int) error {
	m := c.Members[i]
	for attempt := 1; ; attempt++ {
		e, err := startEtcd(m.Cfg)
		if err == nil {
			m.Etcd = e
			return nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == bindAttempts {
			return err
		}
		client, err := freeLoopbackURL()
		if err != nil {
			return err
		}
		peer, err := freeLoopbackURL()
		if err != nil {
			return err
		}
		m.Cfg.ListenClientUrls = []url.URL{client}
		m.Cfg.ListenPeerUrls = []url.URL{peer}
		c.clients[i].SetTarget(client.Host)
		c.peers[i].SetTarget(peer.Host)
	}
}

// Endpoints returns the client URLs of every member, running or not, as an
// application would list them.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.Endpoints()...)
	}
	return eps
}

// Client returns a client given every member's endpoint, closed when the
// test ends.
func (c *Cluster) Client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	return NewClient(tb, clientv3.Config{Endpoints: c.Endpoints()})
}

// MemberClient returns a client of member i alone, closed when the test
// ends.
func (c *Cluster) MemberClient(tb testing.TB, i int) *clientv3.Client {
	tb.Helper()
	return c.Members[i].Client(tb)
}

// Leader returns the index of the member that leads, waiting until a
// running member reports itself leader. It fails the test if none does
// within 30 s.
func (c *Cluster) Leader() int {
	c.tb.Helper()
	deadline := time.Now().Add(leaderTimeout)
	for {
		for i, m := range c.Members {
			if m.Etcd != nil && m.Etcd.Server.Leader() == memberID(m.Etcd.Server) {
				return i
			}
		}
		if time.Now().After(deadline) {
			c.tb.Fatalf("etcdtest: no leader after %v", leaderTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop stops member i gracefully, as an operator would: a leader first
// hands leadership to another member. Its data stays for Restart.
func (c *Cluster) Stop(i int) {
	c.Members[i].Stop()
	c.down(i)
}

// Kill stops member i without coordination, as a crash would: raft stops
// at once, every connection to the member drops, and a leader hands
// nothing over, so the others elect a new one after an election timeout.
// Its data stays for Restart.
func (c *Cluster) Kill(i int) {
	// Cut the member off first: from then on it can neither reach a
	// quorum nor answer a client. Close then has no connection to wait
	// for.
	c.down(i)
	if e := c.Members[i].Etcd; e != nil {
		e.Server.HardStop()
		e.Close()
	}
	c.Members[i].Etcd = nil
}

// Restart starts member i again, on the same data directory and URLs,
// and waits until it is ready, which needs a quorum of the members.
func (c *Cluster) Restart(i int) {
	c.tb.Helper()
	c.clients[i].Refuse(false)
	c.peers[i].Refuse(false)
	if err := c.start(i); err != nil {
		c.tb.Fatalf("etcdtest: restart %s: %v", c.Members[i].Cfg.Name, err)
	}
}

// down drops every connection to member i and refuses new ones until
// Restart.
func (c *Cluster) down(i int) {
	for _, p := range []*faultproxy.Proxy{c.clients[i], c.peers[i]} {
		p.Refuse(true)
		p.Reset()
	}
}

// ClientProxy returns the proxy that serves member i's client URL: a test
// holds it to blackhole the member for its clients (see
// faultproxy.Proxy.Hold).
func (c *Cluster) ClientProxy(i int) *faultproxy.Proxy {
	return c.clients[i]
}

// Partition cuts member i off from the other members without closing a
// connection: its peer traffic, both ways, is held until Heal, and
// delivered then, as a network partition that heals does. Its clients
// still reach it.
func (c *Cluster) Partition(i int) {
	c.tb.Helper()
	id := memberID(c.Members[i].Etcd.Server).String()
	for j, p := range c.peers {
		if j == i {
			p.Hold() // to i, from every member
		} else {
			p.HoldFrom(id) // from i
		}
	}
}

// Heal ends every hold of Partition and of the client proxies.
func (c *Cluster) Heal() {
	for _, p := range append(slices.Clone(c.clients), c.peers...) {
		p.Heal()
	}
}

// stopAll kills every running member at once (a graceful stop of each in
// turn would try to hand leadership to members that are going too), then
// closes the proxies, cutting what connections remain.
func (c *Cluster) stopAll() {
	var wg sync.WaitGroup
	for i, m := range c.Members {
		if m.Etcd != nil {
			wg.Go(func() { c.Kill(i) })
		}
	}
	wg.Wait()
	for _, p := range append(slices.Clone(c.clients), c.peers...) {
		p.Close()
	}
}

// peerLabel labels a peer connection with the ID of the member that
// opened it, which etcd's peer requests carry in their X-Server-From
// header (server/etcdserver/api/rafthttp, stream.go and util.go).
func peerLabel(r *bufio.Reader) string {
	head := faultproxy.PeekUntil(r, []byte("\r\n\r\n"), 4096)
	for _, line := range bytes.Split(head, []byte("\r\n")) {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && strings.EqualFold(string(name), "X-Server-From") {
			return strings.TrimSpace(string(value))
		}
	}
	return ""
}

// memberID is the member ID of s: EtcdServer.MemberID from etcd 3.6 on,
// ID in 3.5 (go.mod's floor), asked by interface since neither method
// builds with both.
func memberID(s *etcdserver.EtcdServer) types.ID {
	switch s := any(s).(type) {
	case interface{ MemberID() types.ID }:
		return s.MemberID()
	case interface{ ID() types.ID }:
		return s.ID()
	}
	panic("etcdtest: a member with no ID")
}
