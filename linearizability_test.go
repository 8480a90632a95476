package etcdstore

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// Linearizability: each session behaves as one register, read and written
// atomically, even while the etcd leader is lost. Several stores, each
// with its own client, run Commit, Delete and Find on a few tokens at a
// time; the history is checked against a register per token with
// porcupine.
//
// A deleted session stays deleted: the delete leaves a tombstone that no
// commit writes over (commit.go), so the register has three states: never
// written, a value, and deleted. A delete of a session never written
// leaves a tombstone too.

// regOp is what an operation on a session register did.
type regOp byte

const (
	regCommit regOp = 'c' // writes the value, unless deleted
	regDelete regOp = 'd' // deletes
	regFind   regOp = 'f' // reads
)

// regInput is an operation's call: its kind, the token, and for a commit
// the value written (unique in the history).
type regInput struct {
	op    regOp
	token string
	value string
}

// regOutput is a find's result: the value read, "" when not found.
type regOutput struct {
	value string
}

// regDeleted is the register's state once deleted; values written are
// never empty and never this.
const regDeleted = "\x00deleted"

// unknownReturn is the return time of a write whose outcome is unknown (it
// returned an error or timed out): it may take effect at any time after
// its call, or never, which porcupine models as an operation that has not
// returned by the end of the history.
const unknownReturn = math.MaxInt64

// linCheckTimeout bounds the linearizability check. A few hundred operations
// on three tokens take milliseconds; a result of Unknown (timed out) fails.
const linCheckTimeout = 30 * time.Second

// registerModel is a register per token, never written ("") at first.
var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byToken := make(map[string][]porcupine.Operation)
		var tokens []string
		for _, op := range history {
			tok := op.Input.(regInput).token
			if byToken[tok] == nil {
				tokens = append(tokens, tok)
			}
			byToken[tok] = append(byToken[tok], op)
		}
		sort.Strings(tokens)
		var parts [][]porcupine.Operation
		for _, tok := range tokens {
			parts = append(parts, byToken[tok])
		}
		return parts
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in, st := input.(regInput), state.(string)
		switch in.op {
		case regCommit:
			if st == regDeleted {
				return true, st
			}
			return true, in.value
		case regDelete:
			return true, regDeleted
		default:
			if st == regDeleted {
				st = ""
			}
			return output.(regOutput).value == st, state
		}
	},
	DescribeOperation: func(input, output any) string {
		in := input.(regInput)
		switch in.op {
		case regCommit:
			return fmt.Sprintf("commit(%s, %q)", in.token, in.value)
		case regDelete:
			return fmt.Sprintf("delete(%s)", in.token)
		default:
			return fmt.Sprintf("find(%s) -> %q", in.token, output.(regOutput).value)
		}
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%q", state) },
}

// regHistory collects operations from several goroutines, timed on one
// monotonic clock.
type regHistory struct {
	start time.Time

	mu  sync.Mutex // protects ops
	ops []porcupine.Operation
}

func (h *regHistory) now() int64 { return int64(time.Since(h.start)) }

// add records an operation that was called at call and returned err. A
// write that failed has an unknown outcome: it is kept, never returning.
// A read that failed changed nothing and is dropped.
// randomOp makes one random operation of client on token through s and
// adds it to h: its n-th, a commit (of a value unique to client and n, to
// expire at expiry) commitPct times in a hundred, a delete deletePct
// times, and a find otherwise.
func (h *regHistory) randomOp(ctx context.Context, s *EtcdStore, rng *rand.Rand, client, n int, token string, commitPct, deletePct int, expiry time.Time) error {
	in := regInput{token: token}
	var out regOutput
	call := h.now()
	var err error
	switch p := rng.IntN(100); {
	case p < commitPct:
		in.op, in.value = regCommit, fmt.Sprintf("c%d-%d", client, n)
		err = s.CommitCtx(ctx, in.token, []byte(in.value), expiry)
	case p < commitPct+deletePct:
		in.op = regDelete
		err = s.DeleteCtx(ctx, in.token)
	default:
		in.op = regFind
		var b []byte
		b, _, err = s.FindCtx(ctx, in.token)
		out.value = string(b)
	}
	h.add(client, in, out, call, err)
	return err
}

func (h *regHistory) add(client int, in regInput, out regOutput, call int64, err error) {
	ret := h.now()
	if err != nil {
		if in.op == regFind {
			return
		}
		ret = unknownReturn
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
}

// checkLinearizable fails the test unless ops is linearizable, writing a
// visualisation of the history to the test's artifact directory if not.
func checkLinearizable(t *testing.T, ops []porcupine.Operation) {
	t.Helper()
	res := porcupine.CheckOperationsTimeout(registerModel, ops, linCheckTimeout)
	if res == porcupine.Ok {
		return
	}
	_, info := porcupine.CheckOperationsVerbose(registerModel, ops, linCheckTimeout)
	path := filepath.Join(artifactDir(t), "history.html")
	if err := porcupine.VisualizePath(registerModel, info, path); err != nil {
		t.Logf("visualize: %v", err)
	}
	t.Fatalf("history of %d operations: %s, want %s (visualised in %s, %s)", len(ops), res, porcupine.Ok, path, artifactKept)
}

// TestLinearizableUnderLeaderLoss runs Commit, Delete and Find from four
// stores, each with its own client given every member, two of them with
// the read cache, crashes the leader in the middle, and checks the
// history. The operations go to three tokens at a time, moving on to
// fresh ones every linTokenOps operations, since a deleted session takes
// no more writes.
func TestLinearizableUnderLeaderLoss(t *testing.T) {
	t.Parallel()
	const (
		clients     = 4
		maxOps      = 150 // per client
		opTimeout   = time.Second
		killAfter   = 100 // operations completed before the crash
		afterKill   = 150 // and after it
		runDeadline = 30 * time.Second
	)
	const linTokenOps = 60
	c := etcdtest.StartCluster(t, 3)
	h := &regHistory{start: time.Now()}
	var (
		done, okAfter atomic.Int64
		killed        atomic.Bool
		stop          = make(chan struct{})
		wg            sync.WaitGroup
	)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	for id := range clients {
		// Half the stores read from the read cache.
		var opts []Option
		if id%2 == 1 {
			opts = append(opts, WithReadCache())
		}
		s := NewWithPrefix(c.Client(t), faultPrefix(t), opts...)
		t.Cleanup(func() { s.Close() })
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(id)))
			for n := range maxOps {
				select {
				case <-stop:
					return
				default:
				}
				token := fmt.Sprint("t", done.Load()/linTokenOps+int64(rng.IntN(3)))
				ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				err := h.randomOp(ctx, s, rng, id, n, token, 40, 15, faultExpiry())
				cancel()
				done.Add(1)
				if err == nil && killed.Load() {
					okAfter.Add(1)
				}
			}
		})
	}
	t.Cleanup(func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	})

	faultWaitFor(t, "operations before the crash", func() bool { return done.Load() >= killAfter })
	c.Kill(c.Leader())
	killed.Store(true)
	n := done.Load()
	deadline := time.Now().Add(runDeadline)
	for (done.Load() < n+afterKill || okAfter.Load() == 0) && done.Load() < clients*maxOps {
		if time.Now().After(deadline) {
			t.Fatalf("%d operations in the %v after the crash, %d of them successful", done.Load()-n, runDeadline, okAfter.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()

	var unknown int
	for _, op := range h.ops {
		if op.Return == unknownReturn {
			unknown++
		}
	}
	t.Logf("%d operations recorded (%d writes of unknown outcome; failed reads dropped), %d succeeded after the crash",
		len(h.ops), unknown, okAfter.Load())
	checkLinearizable(t, h.ops)
}

// TestRegisterModel checks the checker: hand-made histories of one token
// that are and are not linearizable, including writes of unknown outcome.
func TestRegisterModel(t *testing.T) {
	t.Parallel()
	commit := func(v string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: regInput{op: regCommit, token: "t", value: v}, Call: call, Return: ret}
	}
	del := func(call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: regInput{op: regDelete, token: "t"}, Call: call, Return: ret}
	}
	find := func(v string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: regInput{op: regFind, token: "t"}, Output: regOutput{v}, Call: call, Return: ret}
	}
	for _, tc := range []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"read your write", []porcupine.Operation{commit("a", 0, 10), find("a", 20, 30)}, porcupine.Ok},
		{"delete", []porcupine.Operation{commit("a", 0, 10), del(20, 30), find("", 40, 50)}, porcupine.Ok},
		{"concurrent write either way", []porcupine.Operation{commit("a", 0, 10), commit("b", 5, 30), find("a", 20, 40), find("b", 50, 60)}, porcupine.Ok},
		{"stale read", []porcupine.Operation{commit("a", 0, 10), find("a", 20, 30), commit("b", 40, 50), find("a", 60, 70)}, porcupine.Illegal},
		{"acknowledged write lost", []porcupine.Operation{commit("a", 0, 10), find("", 20, 30)}, porcupine.Illegal},
		{"deleted session back", []porcupine.Operation{commit("a", 0, 10), del(20, 30), find("a", 40, 50)}, porcupine.Illegal},
		{"value never written", []porcupine.Operation{commit("a", 0, 10), find("b", 20, 30)}, porcupine.Illegal},
		{"unknown write takes effect late", []porcupine.Operation{commit("x", 0, unknownReturn), find("", 10, 20), find("x", 30, 40)}, porcupine.Ok},
		{"unknown write never takes effect", []porcupine.Operation{commit("x", 0, unknownReturn), find("", 10, 20), find("", 30, 40)}, porcupine.Ok},
		{"unknown write undone", []porcupine.Operation{commit("x", 0, unknownReturn), find("x", 10, 20), find("", 30, 40)}, porcupine.Illegal},
		{"commit after delete", []porcupine.Operation{commit("a", 0, 10), del(20, 30), commit("b", 40, 50), find("", 60, 70)}, porcupine.Ok},
		{"commit brings a session back", []porcupine.Operation{commit("a", 0, 10), del(20, 30), commit("b", 40, 50), find("b", 60, 70)}, porcupine.Illegal},
		{"commit concurrent with delete, refused", []porcupine.Operation{commit("a", 0, 10), del(20, 40), commit("b", 30, 50), find("", 60, 70)}, porcupine.Ok},
		{"commit concurrent with delete, first", []porcupine.Operation{commit("a", 0, 10), del(20, 40), commit("b", 30, 50), find("b", 35, 38), find("", 60, 70)}, porcupine.Ok},
		{"commit outlives a concurrent delete", []porcupine.Operation{commit("a", 0, 10), del(20, 40), commit("b", 30, 50), find("b", 60, 70)}, porcupine.Illegal},
		{"late write after a delete", []porcupine.Operation{commit("a", 0, unknownReturn), find("a", 10, 20), del(30, 40), find("a", 50, 60)}, porcupine.Illegal},
		{"late write after a newer write", []porcupine.Operation{commit("a", 0, 10), commit("b", 20, unknownReturn), find("b", 30, 40), commit("c", 50, 60), find("b", 70, 80)}, porcupine.Illegal},
		{"delete of a session never written leaves a tombstone", []porcupine.Operation{del(0, 10), commit("a", 20, 30), find("a", 40, 50)}, porcupine.Illegal},
		{"unknown write seen before its call", []porcupine.Operation{find("x", 0, 10), commit("x", 20, unknownReturn)}, porcupine.Illegal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := porcupine.CheckOperationsTimeout(registerModel, tc.ops, 10*time.Second); got != tc.want {
				t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
			}
		})
	}
}
