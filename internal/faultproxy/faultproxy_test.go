package faultproxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// quiet is how long a read waits to show that nothing arrives.
const quiet = 100 * time.Millisecond

// echoServer accepts connections on loopback and echoes what each sends.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

func start(t *testing.T, target string, opts ...Option) *Proxy {
	t.Helper()
	p, err := New(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// send writes msg on c.
func send(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
}

// expect reads len(want) bytes from c within 10 s and fails unless they
// are want.
func expect(t *testing.T, c net.Conn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
		t.Fatalf("read %q, %v; want %q", got, err, want)
	}
}

// expectNothing fails if c delivers anything within quiet.
func expectNothing(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(quiet))
	var b [1]byte
	if n, err := c.Read(b[:]); n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("held link delivered %q (%v)", b[:n], err)
	}
}

// expectClosed fails unless c is closed by the other side within 10 s.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if n, err := c.Read(b[:]); n > 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %q, %v; want the connection closed", b[:n], err)
	}
}

func TestForward(t *testing.T) {
	t.Parallel()
	c := dial(t, start(t, echoServer(t)))
	send(t, c, "hello")
	expect(t, c, "hello")
}

// TestHoldDeliversOnHeal: a held link forwards nothing either way, stays
// open, and delivers what it held, in order, once healed; connections
// made while held are held too.
func TestHoldDeliversOnHeal(t *testing.T) {
	t.Parallel()
	p := start(t, echoServer(t))
	c := dial(t, p)
	send(t, c, "before ")
	expect(t, c, "before ")
	p.Hold()
	send(t, c, "held ")
	send(t, c, "twice")
	expectNothing(t, c)
	fresh := dial(t, p)
	send(t, fresh, "new")
	expectNothing(t, fresh)
	p.Heal()
	expect(t, c, "held twice")
	expect(t, fresh, "new")
}

func TestReset(t *testing.T) {
	t.Parallel()
	p := start(t, echoServer(t))
	held, open := dial(t, p), dial(t, p)
	for _, c := range []net.Conn{held, open} {
		send(t, c, "x")
		expect(t, c, "x")
	}
	p.Hold()
	send(t, held, "lost")
	p.Reset()
	expectClosed(t, held)
	expectClosed(t, open)
	p.Heal()
	c := dial(t, p)
	send(t, c, "after")
	expect(t, c, "after")
}

func TestRefuse(t *testing.T) {
	t.Parallel()
	p := start(t, echoServer(t))
	open := dial(t, p)
	send(t, open, "open")
	expect(t, open, "open")
	p.Refuse(true)
	expectClosed(t, dial(t, p))
	send(t, open, "still")
	expect(t, open, "still")
	p.Refuse(false)
	c := dial(t, p)
	send(t, c, "again")
	expect(t, c, "again")
}

// TestHoldFrom: only the connections of the label held stop, and the
// bytes the label was read from are forwarded.
func TestHoldFrom(t *testing.T) {
	t.Parallel()
	label := func(r *bufio.Reader) string {
		b := PeekUntil(r, []byte("\n"), 64)
		line, _, _ := bytes.Cut(b, []byte("\n"))
		return strings.TrimSpace(string(line))
	}
	p := start(t, echoServer(t), WithLabel(label))
	a, b := dial(t, p), dial(t, p)
	send(t, a, "a\n")
	send(t, b, "b\n")
	expect(t, a, "a\n")
	expect(t, b, "b\n")
	p.HoldFrom("a")
	send(t, a, "1")
	send(t, b, "2")
	expect(t, b, "2")
	expectNothing(t, a)
	p.Heal()
	expect(t, a, "1")
}

func TestPeekUntil(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, want string
		max      int
	}{
		{"GET / HTTP/1.1\r\nX: y\r\n\r\nbody", "GET / HTTP/1.1\r\nX: y\r\n\r\nbody", 1024},
		{"no end in sight", "no end", 6},
		{"short", "short", 1024},
	} {
		r := bufio.NewReader(strings.NewReader(tc.in))
		if got := string(PeekUntil(r, []byte("\r\n\r\n"), tc.max)); !strings.HasPrefix(got, tc.want) || (tc.max < len(tc.in) && len(got) > tc.max) {
			t.Errorf("PeekUntil(%q, max %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
		if rest, _ := io.ReadAll(r); string(rest) != tc.in {
			t.Errorf("PeekUntil(%q) consumed input: %q left", tc.in, rest)
		}
	}
}
