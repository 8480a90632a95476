package webtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"
)

// The paths of Debian's chromium and chromium-driver packages, which
// .ci/run installs when they are missing.
const (
	ChromiumPath     = "/usr/bin/chromium"
	ChromeDriverPath = "/usr/bin/chromedriver"
)

// chromeArgs are chromium's flags: headless, and able to run as root and
// in a container with a small /dev/shm.
var chromeArgs = []string{"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"}

// Chrome is a real headless Chromium, driven through chromedriver's W3C
// WebDriver API (https://www.w3.org/TR/webdriver2/) with net/http alone.
// Each has its own chromedriver, browser and profile, so tests that use
// it may run in parallel. Its methods fail the test on any error.
type Chrome struct {
	tb      testing.TB
	base    string // chromedriver's URL, then /session/ID
	session string
	client  *http.Client
}

// StartChrome starts chromedriver and, through it, a headless chromium,
// both stopped when the test ends. When either program is missing it
// skips the test, unless the environment variable CI is true: then it
// fails it, so that CI cannot pass without the browser.
func StartChrome(tb testing.TB) *Chrome {
	tb.Helper()
	for _, path := range []string{ChromiumPath, ChromeDriverPath} {
		if _, err := os.Stat(path); err != nil {
			msg := fmt.Sprintf("no %s (%v): install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) to run this test in a real browser", path, err)
			if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
				tb.Fatal(msg + "; CI is set, so the test fails rather than skips")
			}
			tb.Skip(msg)
		}
	}

	port := &portWriter{found: make(chan int, 1)}
	cmd := exec.Command(ChromeDriverPath, "--port=0")
	cmd.Stdout = port
	cmd.Stderr = port
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", ChromeDriverPath, err)
	}
	tb.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	var base string
	select {
	case p := <-port.found:
		base = "http://127.0.0.1:" + strconv.Itoa(p)
	case <-time.After(30 * time.Second):
		tb.Fatalf("%s did not say its port within 30 s; it wrote:\n%s", ChromeDriverPath, port.output())
	}

	c := &Chrome{tb: tb, base: base, client: &http.Client{Timeout: 60 * time.Second}}
	var created struct {
		SessionID string `json:"sessionId"`
	}
	c.call(http.MethodPost, "/session", map[string]any{
		"capabilities": map[string]any{"alwaysMatch": map[string]any{
			"browserName":        "chrome",
			"goog:chromeOptions": map[string]any{"binary": ChromiumPath, "args": chromeArgs},
		}},
	}, &created)
	if created.SessionID == "" {
		tb.Fatal("chromedriver: POST /session returned no session id")
	}
	c.session = created.SessionID
	tb.Cleanup(func() {
		// Quits the browser; chromedriver is killed after.
		c.call(http.MethodDelete, "/session/"+c.session, nil, nil)
		c.client.CloseIdleConnections()
	})
	return c
}

// Navigate loads url in the browser and waits for the page to load.
func (c *Chrome) Navigate(url string) {
	c.tb.Helper()
	c.call(http.MethodPost, "/session/"+c.session+"/url", map[string]any{"url": url}, nil)
}

// Execute runs script, the body of a JavaScript function, in the page
// with args, and stores what it returns in out (as encoding/json would),
// unless out is nil.
func (c *Chrome) Execute(out any, script string, args ...any) {
	c.tb.Helper()
	if args == nil {
		args = []any{}
	}
	c.call(http.MethodPost, "/session/"+c.session+"/execute/sync", map[string]any{"script": script, "args": args}, out)
}

// Text returns the rendered text of the first element that matches the
// CSS selector.
func (c *Chrome) Text(selector string) string {
	c.tb.Helper()
	var elem map[string]string
	c.call(http.MethodPost, "/session/"+c.session+"/element", map[string]any{"using": "css selector", "value": selector}, &elem)
	// The W3C web element identifier.
	id := elem["element-6066-11e4-a52e-4f735466cecf"]
	if id == "" {
		c.tb.Fatalf("webdriver: element %q: no element reference in %v", selector, elem)
	}
	var text string
	c.call(http.MethodGet, "/session/"+c.session+"/element/"+id+"/text", nil, &text)
	return text
}

// call sends a WebDriver command and decodes the "value" of its answer
// into out, unless out is nil. An error answer fails the test.
func (c *Chrome) call(method, path string, body, out any) {
	c.tb.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			c.tb.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, c.base+path, r)
	if err != nil {
		c.tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		c.tb.Fatalf("webdriver: %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var answer struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		c.tb.Fatalf("webdriver: %s %s: %s: %v", method, path, resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error, Message string }
		json.Unmarshal(answer.Value, &e)
		c.tb.Fatalf("webdriver: %s %s: %s: %s: %s", method, path, resp.Status, e.Error, e.Message)
	}
	if out != nil {
		if err := json.Unmarshal(answer.Value, out); err != nil {
			c.tb.Fatalf("webdriver: %s %s: value %s: %v", method, path, answer.Value, err)
		}
	}
}

// startedRE matches chromedriver's line that gives its port.
var startedRE = regexp.MustCompile(`started successfully on port (\d+)`)

// portWriter keeps chromedriver's output and sends the port it listens
// on, once it says it.
type portWriter struct {
	found chan int // gets the port, once

	mu sync.Mutex
	// protects out and sent
	out  bytes.Buffer
	sent bool
}

func (w *portWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.out.Write(p)
	if m := startedRE.FindSubmatch(w.out.Bytes()); m != nil && !w.sent {
		port, _ := strconv.Atoi(string(m[1]))
		w.found <- port
		w.sent = true
	}
	return len(p), nil
}

func (w *portWriter) output() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.String()
}
