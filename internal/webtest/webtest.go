// Package webtest is the browser of etcdstore's web tests: an HTTP client
// with a cookie jar, as a user agent keeps its session cookie, sending
// requests to any app server as a load balancer would; and, for what
// takes a real browser (a page's script), a headless Chromium driven
// through WebDriver (Chrome).
package webtest

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"testing"
	"time"
)

// CookieName is the name of SCS's session cookie by default
// (scs.SessionManager.Cookie.Name).
const CookieName = "session"

// Browser is an HTTP client with a cookie jar, closed when the test ends.
type Browser struct {
	tb     testing.TB
	Client *http.Client
}

// New returns a browser with an empty cookie jar.
func New(tb testing.TB) *Browser {
	tb.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		tb.Fatal(err)
	}
	b := &Browser{tb: tb, Client: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
	tb.Cleanup(b.Client.CloseIdleConnections)
	return b
}

// Get requests base+path and returns the status code and the body.
func (b *Browser) Get(base, path string) (int, string) {
	b.tb.Helper()
	resp, err := b.Client.Get(base + path)
	if err != nil {
		b.tb.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.tb.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

// MustGet requests base+path and returns the body, failing the test
// unless the status is 200.
func (b *Browser) MustGet(base, path string) string {
	b.tb.Helper()
	code, body := b.Get(base, path)
	if code != http.StatusOK {
		b.tb.Fatalf("GET %s: %d %q, want 200", path, code, body)
	}
	return body
}

// Want requests base+path and fails the test unless the answer is 200
// with body.
func (b *Browser) Want(base, path, body string) {
	b.tb.Helper()
	if got := b.MustGet(base, path); got != body {
		b.tb.Fatalf("GET %s: %q, want %q", path, got, body)
	}
}

// Token returns the session cookie the browser holds for base, or "".
func (b *Browser) Token(base string) string {
	b.tb.Helper()
	u, err := url.Parse(base)
	if err != nil {
		b.tb.Fatal(err)
	}
	for _, c := range b.Client.Jar.Cookies(u) {
		if c.Name == CookieName {
			return c.Value
		}
	}
	return ""
}

// SetToken puts the session cookie token in the browser's jar for base,
// as a browser that still holds a cookie the app told it to drop
// (another tab's copy, a restored backup).
func (b *Browser) SetToken(base, token string) {
	b.tb.Helper()
	u, err := url.Parse(base)
	if err != nil {
		b.tb.Fatal(err)
	}
	b.Client.Jar.SetCookies(u, []*http.Cookie{{Name: CookieName, Value: token, Path: "/"}})
}

// Events opens base's /events (server-sent events) as the browser, with a
// deadline of d for the whole stream, and returns the stream once its
// first line, the retry delay ("retry: 1000"), has come: the app has
// subscribed by then. It fails the test unless the answer is 200 with an
// event stream. The stream is closed when the test ends.
func (b *Browser) Events(base string, d time.Duration) *bufio.Reader {
	b.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	b.tb.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events", nil)
	if err != nil {
		b.tb.Fatal(err)
	}
	resp, err := b.Client.Do(req)
	if err != nil {
		b.tb.Fatalf("GET /events: %v", err)
	}
	b.tb.Cleanup(func() { resp.Body.Close() })
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "text/event-stream" {
		b.tb.Fatalf("GET /events: %s, Content-Type %q; want 200 text/event-stream", resp.Status, ct)
	}
	r := bufio.NewReader(resp.Body)
	if line, err := r.ReadString('\n'); err != nil || line != "retry: 1000\n" {
		b.tb.Fatalf("GET /events: first line %q, %v; want the retry delay", line, err)
	}
	return r
}
