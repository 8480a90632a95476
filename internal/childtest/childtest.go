// Package childtest runs the test binary again as another process, for
// tests of what one process holds against another (a file lock, a data
// directory): the child runs one test, which signals with a line on its
// standard output that it holds what it holds, and lets go when its
// standard input closes.
package childtest

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"
)

// Child is a running copy of the test binary.
type Child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout io.ReadCloser
	cancel context.CancelFunc
	waited bool
}

// Start runs the test binary as a child that runs only the test named
// test, with env (a "NAME=value") added to its environment, and waits for
// its first line of output, which must be ready. The child is stopped when
// the test ends, at the latest, and is killed after within.
func Start(tb testing.TB, test, env, ready string, within time.Duration) *Child {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	c := &Child{cmd: exec.CommandContext(ctx, os.Args[0], "-test.run=^"+test+"$"), cancel: cancel}
	c.cmd.Env = append(os.Environ(), env)
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	if c.stdout, err = c.cmd.StdoutPipe(); err != nil {
		tb.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Stop() })
	if line, err := bufio.NewReader(c.stdout).ReadString('\n'); line != ready+"\n" {
		tb.Fatalf("the other process said %q, %v; want %s", line, err, ready)
	}
	return c
}

// Stop closes the child's standard input, so that it lets go and ends,
// and waits for it. Calls after the first return nil.
func (c *Child) Stop() error {
	if c.waited {
		return nil
	}
	c.waited = true
	defer c.cancel()
	c.stdin.Close()
	io.Copy(io.Discard, c.stdout)
	return c.cmd.Wait()
}
