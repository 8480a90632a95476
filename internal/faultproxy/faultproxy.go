// Package faultproxy is a TCP proxy that injects network faults into the
// links it forwards, for tests on loopback.
//
// A Proxy accepts connections on a loopback port of its own and forwards
// each to a target address. At any time it can
//
//   - hold connections (Hold, HoldFrom): stop forwarding in both
//     directions without closing anything, as a link that silently drops
//     packets or a stalled host does, and deliver what it held, in order,
//     once healed (Heal), as TCP retransmission does when the link
//     recovers: the first piece held at once, the rest a moment later;
//   - reset them (Reset): close every connection, as a crash or a cut link
//     does;
//   - refuse new connections (Refuse), as a stopped process's port does.
//
// A held connection stays open: the sender's writes succeed until the
// kernel's buffers fill, and nothing reaches the other side. New
// connections made while the proxy holds are accepted and held too.
//
// HoldFrom holds only the connections whose label, read from the first
// bytes the connecting side sends (see WithLabel), is the one given: an
// etcd member's peer proxy can so hold the traffic of one peer and not of
// the others.
package faultproxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
	"time"
)

// dialTimeout bounds the dial of the target for each connection.
const dialTimeout = time.Second

// retransmitGap is how long a healed link waits, after it delivered the
// first piece it held, before it forwards the rest: TCP retransmits the
// first unacknowledged segment when its backed-off timer fires, and sends
// what follows only as acknowledgments come back, a round trip later.
const retransmitGap = 2 * time.Millisecond

// labelTimeout bounds how long a connection may take to send the bytes its
// label is read from.
const labelTimeout = 5 * time.Second

// Proxy forwards TCP connections from its own loopback port to a target.
// Its methods are safe for concurrent use by multiple goroutines.
type Proxy struct {
	l     net.Listener
	label func(*bufio.Reader) string
	wg    sync.WaitGroup

	mu       sync.Mutex // protects the fields below
	target   string     // host:port
	conns    map[*link]struct{}
	holdAll  bool
	holdFrom map[string]bool // labels held
	healed   chan struct{}   // closed, and replaced, on every change of what is held
	refuse   bool
	closed   bool
}

// Option configures a Proxy.
type Option func(*Proxy)

// WithLabel makes the proxy label each connection with f, called on a
// reader of what the connecting side sends, before anything is forwarded.
// f must look only through the reader's Peek, since every byte is
// forwarded after it (PeekUntil helps). f returns "" for a connection it
// cannot label, which only Hold holds.
func WithLabel(f func(*bufio.Reader) string) Option {
	return func(p *Proxy) { p.label = f }
}

// New starts a proxy to target (host:port) on a free loopback port.
func New(target string, opts ...Option) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{l: l, target: target, conns: make(map[*link]struct{}), holdFrom: make(map[string]bool), healed: make(chan struct{})}
	for _, opt := range opts {
		opt(p)
	}
	p.wg.Go(p.serve)
	return p, nil
}

// Addr returns the proxy's host:port.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// URL returns the proxy's address as an http URL.
func (p *Proxy) URL() url.URL { return url.URL{Scheme: "http", Host: p.Addr()} }

// SetTarget makes new connections go to target; those open stay as they
// are.
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// Hold stops forwarding on every connection, open or new, until Heal.
func (p *Proxy) Hold() {
	p.mu.Lock()
	p.holdAll = true
	p.changedLocked()
	p.mu.Unlock()
}

// HoldFrom stops forwarding on every connection, open or new, labelled
// label (see WithLabel), until Heal.
func (p *Proxy) HoldFrom(label string) {
	p.mu.Lock()
	p.holdFrom[label] = true
	p.changedLocked()
	p.mu.Unlock()
}

// Heal ends every hold: what the held connections carried is delivered.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.holdAll = false
	clear(p.holdFrom)
	p.changedLocked()
	p.mu.Unlock()
}

// Reset closes every open connection, held or not; what was held is lost.
func (p *Proxy) Reset() {
	p.mu.Lock()
	for c := range p.conns {
		c.closeLocked()
	}
	p.changedLocked()
	p.mu.Unlock()
}

// Refuse makes the proxy close each new connection at once (refuse
// true), or accept them again (false). Connections open stay as they are:
// Reset closes them.
func (p *Proxy) Refuse(refuse bool) {
	p.mu.Lock()
	p.refuse = refuse
	p.mu.Unlock()
}

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines to end.
func (p *Proxy) Close() {
	p.l.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.closeLocked()
	}
	p.changedLocked()
	p.mu.Unlock()
	p.wg.Wait()
}

// changedLocked wakes the forwarders waiting on a hold; p.mu is held.
func (p *Proxy) changedLocked() {
	close(p.healed)
	p.healed = make(chan struct{})
}

func (p *Proxy) serve() {
	for {
		in, err := p.l.Accept()
		if err != nil {
			return // closed
		}
		// Tracked from its accept on, so that Reset and Close reach a
		// connection still being set up.
		c := &link{in: in}
		if !p.track(c) {
			in.Close()
			continue
		}
		p.wg.Go(func() { p.forward(c) })
	}
}

// link is one forwarded connection: in from the connecting side, out to
// the target.
type link struct {
	in, out net.Conn
	label   string
	closed  bool // by Reset or Close; guarded by the proxy's mu
}

func (c *link) closeLocked() {
	c.closed = true
	c.in.Close()
	if c.out != nil {
		c.out.Close()
	}
}

// forward copies between c's connection and a new one to the target until
// either side ends or the proxy closes them.
func (p *Proxy) forward(c *link) {
	defer p.untrack(c)
	in := c.in
	p.mu.Lock()
	target := p.target
	p.mu.Unlock()
	out, err := net.DialTimeout("tcp", target, dialTimeout)
	if err != nil {
		in.Close() // the target is down: refuse, as its port would
		return
	}
	src := io.Reader(in)
	if p.label != nil {
		r := bufio.NewReader(in)
		in.SetReadDeadline(time.Now().Add(labelTimeout))
		label := p.label(r)
		in.SetReadDeadline(time.Time{})
		p.mu.Lock()
		c.label = label
		p.mu.Unlock()
		src = r
	}
	p.mu.Lock()
	c.out = out
	closed := c.closed
	p.mu.Unlock()
	if closed {
		in.Close()
		out.Close()
		return
	}
	done := make(chan struct{})
	go func() {
		p.copy(c, out, src)
		close(done)
	}()
	p.copy(c, in, out)
	in.Close()
	out.Close()
	<-done
}

// copy copies from src to dst, waiting while c is held before each write,
// until either side fails.
func (p *Proxy) copy(c *link, dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			open, waited := p.waitForward(c)
			if !open {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			if waited {
				time.Sleep(retransmitGap)
			}
		}
		if err != nil {
			// One side ended: end the other's writes too, so that a
			// half-closed link does not linger.
			if cw, ok := dst.(interface{ CloseWrite() error }); ok && errors.Is(err, io.EOF) {
				cw.CloseWrite()
			}
			return
		}
	}
}

// waitForward waits until c is not held, and reports whether c is still
// open and whether it had to wait.
func (p *Proxy) waitForward(c *link) (open, waited bool) {
	for {
		p.mu.Lock()
		if c.closed {
			p.mu.Unlock()
			return false, waited
		}
		if !p.holdAll && !(c.label != "" && p.holdFrom[c.label]) {
			p.mu.Unlock()
			return true, waited
		}
		healed := p.healed
		p.mu.Unlock()
		<-healed
		waited = true
	}
}

// PeekUntil peeks at r until what it holds contains sep, at most max
// bytes, and returns what it saw; it reads nothing.
func PeekUntil(r *bufio.Reader, sep []byte, max int) []byte {
	for n := 1; n <= max; n = r.Buffered() + 1 {
		b, err := r.Peek(n)
		if err != nil {
			return b
		}
		b, _ = r.Peek(min(r.Buffered(), max))
		if bytes.Contains(b, sep) || len(b) >= max {
			return b
		}
	}
	return nil
}

// track registers c, unless the proxy refuses connections or is closed.
func (p *Proxy) track(c *link) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.refuse || p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c *link) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}
