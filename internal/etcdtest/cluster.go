package etcdtest

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
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

// leaderTimeout bounds how long Leader waits for the members to agree on
// a leader.
const leaderTimeout = 30 * time.Second

// Cluster is a multi-member etcd cluster in one process: real members
// talking raft over loopback peer URLs. Its methods are meant for the test
// goroutine: they are not safe for concurrent use.
//
// Each member advertises a peer URL served by a proxy of the cluster's,
// which forwards to the port the member listens on. Stopping a member cuts
// every connection to it at once, as a crash would, and stopping the
// cluster cuts them all. Without that, a peer connection can outlive its
// member by up to etcd's 5 s peer read timeout (an HTTP keep-alive
// connection whose read deadline etcd's listener re-arms), which a
// goroutine-leak check at the end of the tests would report.
type Cluster struct {
	tb      testing.TB
	Members []*Server // a member's Etcd is nil while it is stopped
	proxies []*peerProxy
}

// StartCluster starts an n-member cluster on free loopback ports, each
// member's data in its own directory under tb.TempDir(), and stops it when
// the test ends. The options apply to every member, after the cluster's
// defaults (fsync off, a 50 ms heartbeat and a 500 ms election timeout).
func StartCluster(tb testing.TB, n int, opts ...Option) *Cluster {
	tb.Helper()
	if n < 1 {
		tb.Fatalf("etcdtest: cluster of %d members", n)
	}
	c := &Cluster{tb: tb}
	token := "cluster-" + strings.ReplaceAll(tb.Name(), "/", "-")
	var initial []string
	tb.Cleanup(c.stopAll)
	for i := range n {
		cfg := Config(tb, fmt.Sprintf("m%d", i), tb.TempDir())
		cfg.InitialClusterToken = token
		cfg.TickMs = clusterTickMs
		cfg.ElectionMs = clusterElectionMs
		p, err := newPeerProxy(cfg.ListenPeerUrls[0].Host)
		if err != nil {
			tb.Fatalf("etcdtest: peer proxy for %s: %v", cfg.Name, err)
		}
		c.proxies = append(c.proxies, p)
		cfg.AdvertisePeerUrls = []url.URL{p.url()}
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
	for i, m := range c.Members {
		wg.Go(func() { m.Etcd, errs[i] = StartEtcd(m.Cfg) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			tb.Fatalf("etcdtest: start cluster: %v", err)
		}
	}
	return c
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
			if m.Etcd != nil && m.Etcd.Server.Leader() == m.Etcd.Server.MemberID() {
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
	c.proxies[i].cut()
}

// Kill stops member i without coordination, as a crash would: raft stops
// at once, in-flight requests fail, and a leader hands nothing over, so
// the others elect a new one after an election timeout. Its data stays for
// Restart.
func (c *Cluster) Kill(i int) {
	if e := c.Members[i].Etcd; e != nil {
		e.Server.HardStop()
		// Cut the peer connections before Close, which otherwise waits
		// up to a second for those the peers keep open.
		c.proxies[i].cut()
		e.Close()
	}
	c.Members[i].Etcd = nil
	c.proxies[i].cut()
}

// Restart starts member i again, on the same data directory and URLs,
// and waits until it is ready, which needs a quorum of the members.
func (c *Cluster) Restart(i int) {
	c.tb.Helper()
	c.Members[i].Start()
}

// kill hard-stops e's raft node, then closes it. Close alone would first
// transfer leadership.
func kill(e *embed.Etcd) {
	if e == nil {
		return
	}
	e.Server.HardStop()
	e.Close()
}

// stopAll kills every running member at once (a graceful stop of each in
// turn would try to hand leadership to members that are going too), then
// closes the proxies, cutting what peer connections remain.
func (c *Cluster) stopAll() {
	var wg sync.WaitGroup
	for _, m := range c.Members {
		e := m.Etcd
		m.Etcd = nil
		wg.Go(func() { kill(e) })
	}
	wg.Wait()
	for _, p := range c.proxies {
		p.close()
	}
}

// peerProxy accepts a member's peer connections on a loopback port of its
// own and forwards each to the member's peer listener.
type peerProxy struct {
	l      net.Listener
	target string // host:port the member listens on for peers
	wg     sync.WaitGroup

	mu     sync.Mutex // protects conns and closed
	conns  map[net.Conn]struct{}
	closed bool
}

func newPeerProxy(target string) (*peerProxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &peerProxy{l: l, target: target, conns: make(map[net.Conn]struct{})}
	p.wg.Go(p.serve)
	return p, nil
}

func (p *peerProxy) url() url.URL {
	return url.URL{Scheme: "http", Host: p.l.Addr().String()}
}

func (p *peerProxy) serve() {
	for {
		in, err := p.l.Accept()
		if err != nil {
			return // closed
		}
		p.wg.Go(func() { p.forward(in) })
	}
}

// forward copies between in and a new connection to the member until
// either side ends or the proxy cuts them.
func (p *peerProxy) forward(in net.Conn) {
	out, err := net.DialTimeout("tcp", p.target, time.Second)
	if err != nil {
		in.Close() // the member is down: refuse, as its port would
		return
	}
	if !p.track(in, out) {
		in.Close()
		out.Close()
		return
	}
	done := make(chan struct{}, 1)
	go func() {
		io.Copy(out, in)
		done <- struct{}{}
	}()
	io.Copy(in, out)
	in.Close()
	out.Close()
	<-done
	p.untrack(in, out)
}

// track registers a forwarded pair, unless the proxy is closed.
func (p *peerProxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *peerProxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.conns, c)
	}
}

// cut closes every connection forwarded so far; new ones are accepted.
func (p *peerProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// close stops accepting, cuts every connection and waits for the
// forwarding goroutines to end.
func (p *peerProxy) close() {
	p.l.Close()
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cut()
	p.wg.Wait()
}
