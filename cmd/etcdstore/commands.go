package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/alexedwards/scs/v2"

	"github.com/etcdstore/etcdstore"
)

// progressEvery is how often a long run writes a progress line.
const progressEvery = 2 * time.Second

// token is how a token is shown: as is when it is a digest
// (-hash-tokens) or asked for (-show-tokens), else a fingerprint.
func (e *env) token(t string) string {
	if e.cfg.hashTokens || e.cfg.showTokens {
		return t
	}
	sum := sha256.Sum256([]byte(t))
	return "sha256:" + hex.EncodeToString(sum[:6])
}

// keyName names a key ID: "clear" for 0.
func keyName(id uint32) string {
	if id == 0 {
		return "clear"
	}
	return fmt.Sprintf("%08x", id)
}

func (e *env) jsonLine(v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintf(e.out, "%s\n", b)
}

func cmdCount(ctx context.Context, e *env) error {
	n, by := 0, make(map[uint32]int)
	for info, err := range e.store.Sessions(ctx, "") {
		if err != nil {
			return err
		}
		if e.cfg.principal != "" && info.Principal != e.cfg.principal {
			continue
		}
		n++
		by[info.SealedBy]++
	}
	if e.cfg.json {
		keys := make(map[string]int)
		for id, c := range by {
			keys[keyName(id)] = c
		}
		e.jsonLine(map[string]any{"sessions": n, "principal": e.cfg.principal, "by_key": keys})
		return nil
	}
	fmt.Fprintf(e.out, "live sessions: %d\n", n)
	if len(by) > 1 || e.keys != nil {
		for _, id := range sortedIDs(by) {
			fmt.Fprintf(e.out, "  sealed by %s: %d\n", keyName(id), by[id])
		}
	}
	return nil
}

func sortedIDs(by map[uint32]int) []uint32 {
	ids := make([]uint32, 0, len(by))
	for id := range by {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func cmdLs(ctx context.Context, e *env) error {
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	if !e.cfg.json {
		cols := "TOKEN\tEXPIRY\tSIZE\tPRINCIPAL\tREVISION\tKEY"
		if e.cfg.showData {
			cols += "\tDATA"
		}
		fmt.Fprintln(tw, cols)
	}
	for info, err := range e.store.Sessions(ctx, "") {
		if err != nil {
			tw.Flush()
			return err
		}
		if e.cfg.principal != "" && info.Principal != e.cfg.principal {
			continue
		}
		expiry := "(lease)"
		if !info.Expiry.IsZero() {
			expiry = info.Expiry.UTC().Format(time.RFC3339)
		}
		principal := info.Principal
		if !info.Opened {
			principal = "(sealed)"
		}
		if e.cfg.json {
			line := map[string]any{"token": e.token(info.Token), "expiry": info.Expiry, "size": info.Size, "principal": info.Principal, "revision": info.Revision, "key": keyName(info.SealedBy), "opened": info.Opened}
			if e.cfg.showData {
				line["data"] = decodeData(info)
			}
			e.jsonLine(line)
			continue
		}
		row := fmt.Sprintf("%s\t%s\t%d\t%s\t%d\t%s", e.token(info.Token), expiry, info.Size, principal, info.Revision, keyName(info.SealedBy))
		if e.cfg.showData {
			row += fmt.Sprintf("\t%v", decodeData(info))
		}
		fmt.Fprintln(tw, row)
	}
	return tw.Flush()
}

// decodeData returns a session's values as SCS's GobCodec decodes them,
// in strings, or why it cannot.
func decodeData(info etcdstore.SessionInfo) any {
	if !info.Opened {
		return "(sealed under a key not given: -keys)"
	}
	_, values, err := scs.GobCodec{}.Decode(info.Data)
	if err != nil {
		return fmt.Sprintf("(not gob: %d bytes)", len(info.Data))
	}
	out := make(map[string]string, len(values))
	for k, v := range values {
		out[k] = fmt.Sprint(v)
	}
	return out
}

// progress takes the library's progress callbacks: it writes a line to
// stderr at most every progressEvery, and remembers the last token for an
// interruption's message.
type progress struct {
	e    *env
	verb string
	last string
	done int
	at   time.Time
}

func (p *progress) page(done int, last string, detail string) {
	p.done, p.last = done, last
	if time.Since(p.at) >= progressEvery {
		p.at = time.Now()
		fmt.Fprintf(p.e.errOut, "%s %d sessions%s%s\n", p.verb, done, detail, p.resume())
	}
	if p.e.afterPage != nil {
		p.e.afterPage(done)
	}
}

// resume tells how to go on from the last page.
func (p *progress) resume() string {
	if p.last == "" {
		return ""
	}
	if p.e.cfg.hashTokens || p.e.cfg.showTokens {
		return fmt.Sprintf(" (resume with -from %s)", p.last)
	}
	return " (resume by running it again)"
}

func cmdLogout(ctx context.Context, e *env) error {
	if !e.cfg.all {
		if e.cfg.dryRun {
			s, err := e.store.FindByPrincipal(ctx, e.cfg.principal)
			if err != nil {
				return err
			}
			return e.report(map[string]any{"would_end": len(s), "principal": e.cfg.principal}, "would end %d live sessions of %q\n", len(s), e.cfg.principal)
		}
		n, err := e.store.DeleteByPrincipal(ctx, e.cfg.principal)
		if err != nil {
			return fmt.Errorf("%w (%d ended; run it again to finish)", err, n)
		}
		return e.report(map[string]any{"ended": n, "principal": e.cfg.principal}, "ended %d sessions of %q\n", n, e.cfg.principal)
	}
	if e.cfg.dryRun {
		n := 0
		for _, err := range e.store.Sessions(ctx, e.cfg.from) {
			if err != nil {
				return err
			}
			n++
		}
		return e.report(map[string]any{"would_end": n}, "would end %d live sessions (and any expired ones etcd still holds)\n", n)
	}
	p := &progress{e: e, verb: "ended", at: time.Now()}
	n, err := e.store.EndAll(ctx, e.cfg.from, func(done int, last string) { p.page(done, last, "") })
	if err != nil {
		return fmt.Errorf("%w; %d ended%s", err, n, p.resume())
	}
	return e.report(map[string]any{"ended": n}, "ended %d sessions: each has a \"revoked\" tombstone; a session created after the run began may survive (count shows)\n", n)
}

func (e *env) report(v map[string]any, format string, args ...any) error {
	if e.cfg.json {
		e.jsonLine(v)
	} else {
		fmt.Fprintf(e.out, format, args...)
	}
	return nil
}

func cmdReseal(ctx context.Context, e *env) error {
	first := etcdstore.KeyID(e.keys[0])
	if e.keys[0] == nil {
		first = 0
	}
	if e.cfg.dryRun {
		n := 0
		for info, err := range e.store.Sessions(ctx, e.cfg.from) {
			if err != nil {
				return err
			}
			if info.SealedBy != first && !info.Expiry.IsZero() {
				n++
			}
		}
		return e.report(map[string]any{"would_reseal": n, "key": keyName(first)}, "would reseal %d live sessions under key %s\n", n, keyName(first))
	}
	p := &progress{e: e, verb: "resealed", at: time.Now()}
	r, err := e.store.Reseal(ctx, e.cfg.from, func(r etcdstore.ResealReport, last string) {
		p.page(r.Resealed, last, fmt.Sprintf(" (%d current)", r.Current))
	})
	if err != nil {
		return fmt.Errorf("%w; %d resealed%s", err, r.Resealed, p.resume())
	}
	// What still needs an old key, read afresh.
	old := make(map[uint32]int)
	for info, err := range e.store.Sessions(ctx, "") {
		if err != nil {
			return err
		}
		if info.SealedBy != first && !info.Expiry.IsZero() {
			old[info.SealedBy]++
		}
	}
	if e.cfg.json {
		byKey := make(map[string]int)
		for id, n := range old {
			byKey[keyName(id)] = n
		}
		e.jsonLine(map[string]any{"resealed": r.Resealed, "current": r.Current, "unopenable": r.Unopenable, "gone": r.Gone, "key": keyName(first), "still_old": byKey})
		return nil
	}
	fmt.Fprintf(e.out, "resealed %d sessions under key %s; %d were already; %d ended meanwhile; %d sealed under a key not given\n", r.Resealed, keyName(first), r.Current, r.Gone, r.Unopenable)
	if len(old) == 0 {
		fmt.Fprintf(e.out, "no live session needs a key other than %s: the others may be dropped once every app server seals under %s\n", keyName(first), keyName(first))
		return nil
	}
	for _, id := range sortedIDs(old) {
		fmt.Fprintf(e.out, "still under key %s: %d sessions (an app server still sealing under it, or a key not given)\n", keyName(id), old[id])
	}
	return nil
}

func cmdCheck(ctx context.Context, e *env) error {
	r, err := e.store.CheckIndex(ctx, e.cfg.fix)
	if err != nil {
		return err
	}
	type member struct {
		Endpoint  string `json:"endpoint"`
		Version   string `json:"version,omitempty"`
		Leader    bool   `json:"leader"`
		DBSize    int64  `json:"db_size,omitempty"`
		Error     string `json:"error,omitempty"`
		ReadCache bool   `json:"read_cache"`
	}
	var members []member
	for _, ep := range e.client.Endpoints() {
		sctx, cancel := context.WithTimeout(ctx, e.cfg.timeout)
		st, err := e.client.Status(sctx, ep)
		cancel()
		m := member{Endpoint: ep}
		if err != nil {
			m.Error = err.Error()
		} else {
			m.Version, m.Leader, m.DBSize = st.Version, st.Leader == st.Header.MemberId, st.DbSize
			m.ReadCache = etcdstore.ReadCacheSupported(st.Version)
		}
		members = append(members, m)
	}
	cctx, cancel := context.WithTimeout(ctx, e.cfg.timeout)
	cresp, err := e.client.Get(cctx, etcdstore.CompactorKey)
	cancel()
	compactor := "no etcdstore compactor has run (RunCompactor); compaction is etcd's own --auto-compaction-retention, if set"
	var comp map[string]any
	if err != nil {
		compactor = "cannot read " + etcdstore.CompactorKey + ": " + err.Error()
	} else if len(cresp.Kvs) > 0 {
		kv := cresp.Kvs[0]
		comp = map[string]any{"intervals": kv.Version, "next_compaction_revision": string(kv.Value), "last_turn_revision": kv.ModRevision, "revision": cresp.Header.Revision}
		compactor = fmt.Sprintf("RunCompactor has taken %d turns; the last at revision %d, which compacts at revision %s next (etcd is at %d)", kv.Version, kv.ModRevision, kv.Value, cresp.Header.Revision)
	}
	problems := r.Stale + r.Missing
	if e.cfg.json {
		e.jsonLine(map[string]any{"index": r, "members": members, "compactor": comp})
	} else {
		fmt.Fprintf(e.out, "principal index (%s): %d entries, %d stale; %d live sessions with a principal, %d missing from the index; %d sealed under a key not given (unchecked)\n",
			etcdstore.PrincipalIndexPrefix(e.cfg.prefix), r.Entries, r.Stale, r.Sessions, r.Missing, r.Unverified)
		if e.cfg.fix {
			fmt.Fprintf(e.out, "fixed: %d\n", r.Fixed)
		}
		fmt.Fprintf(e.out, "compactor: %s\n", compactor)
		tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ENDPOINT\tVERSION\tLEADER\tDB SIZE\tREAD CACHE")
		for _, m := range members {
			if m.Error != "" {
				fmt.Fprintf(tw, "%s\t(%s)\t\t\t\n", m.Endpoint, m.Error)
				continue
			}
			cache := "supported"
			if !m.ReadCache {
				cache = "off (needs 3.4.31, 3.5.13 or later)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%s\n", m.Endpoint, m.Version, m.Leader, m.DBSize, cache)
		}
		tw.Flush()
	}
	if problems > 0 && (!e.cfg.fix || r.Fixed < problems) {
		return fail(exitFound, "the index has %d stale and %d missing entries%s", r.Stale, r.Missing, map[bool]string{true: " left after -fix (app servers wrote meanwhile: run it again)", false: ": run check -fix"}[e.cfg.fix])
	}
	return nil
}
