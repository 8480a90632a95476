package etcdstore

import (
	"container/list"
	"sync"
	"time"
)

// What the store remembers of each token.
//
// SCS tells a store at Commit nothing of what the request's Find saw, and
// a store that knows nothing must write blindly. So the store remembers, per
// process, what it last saw of each token in etcd: whether the session
// was stored, its key's mod revision, its expiry and, with
// WithTouchInterval, its data. Two things follow.
//
// Conditional writes: a Commit of a remembered token writes only while
// the key's mod revision is the one seen (commit.go), so neither a late
// attempt nor a request in flight writes over a delete or a newer commit.
// A token the store does not remember (a new session, a renewed token, one
// forgotten past the bound), or saw ended, is written only while its key
// is absent, and, when it is not, again on the revision it holds, unless
// that is a tombstone. The memory chooses the revision a commit is made
// on, never its outcome: that is etcd's (commit.go).
//
// Touch coalescing: a Commit whose data is what the store last saw stored
// and whose expiry is less than the touch interval later than the stored
// one writes nothing (see touchable).
//
// States are ordered by etcd revision: a state older than the one
// remembered (a slow Find that read before a later Commit of this
// process) changes nothing, so the memory never goes back in time.
//
// The memory is bounded by a count of tokens and forgets the least
// recently used first.

// tokenState is what the store last saw of a token in etcd.
type tokenState struct {
	// rev is, for a stored session, its key's mod revision, which a
	// commit compares; otherwise the revision it was seen gone at.
	rev int64
	// stored is whether the key held a session, live or expired; false
	// once seen deleted (a tombstone, or no key).
	stored bool
	expiry time.Time // the stored expiry; zero if unknown or legacy
	// data is the stored data, kept with WithTouchInterval only; hasData
	// tells an empty session from an unknown one.
	data    string
	hasData bool
	// alt, if not empty, is other bytes that the codec decodes to the
	// same session as data: SCS's GobCodec writes an n-value session in
	// one of n orders, so commits of an unchanged session of two values
	// match data or alt and need no decoding.
	alt string
	// principal is the principal the stored session names ("" for none),
	// whose index entry a change or a delete must remove, if principalKnown
	// (see WithPrincipal).
	principal      string
	principalKnown bool
	// sealedBy is the ID of the key that sealed the stored session
	// (WithEncryption; 0: in the clear), whose index entry hashes the
	// principal under that key's.
	sealedBy uint32
	// digests are digests of up to two encodings of the session known to
	// name principal, so that its principal is decoded once per change,
	// not on every Find and commit.
	digests [2]uint64
}

// tokenEntry is one remembered token, the Value of its list element.
type tokenEntry struct {
	token string
	tokenState
}

// tokenMemory is a bounded, least-recently-used map from token to what
// the store last saw of it.
// It does no I/O and is safe for concurrent use by multiple goroutines.
type tokenMemory struct {
	max int

	mu     sync.Mutex               // protects byKey and recent
	byKey  map[string]*list.Element // token -> element of recent
	recent list.List                // of *tokenEntry, most recent first
}

func newTokenMemory(max int) *tokenMemory {
	return &tokenMemory{max: max, byKey: make(map[string]*list.Element)}
}

// last returns what the store last saw of token and whether it remembers
// the token at all. The state is a copy: the caller may read it
// without the lock.
func (m *tokenMemory) last(token string) (tokenState, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.byKey[token]
	if !ok {
		return tokenState{}, false
	}
	m.recent.MoveToFront(el)
	return el.Value.(*tokenEntry).tokenState, true
}

// record records a state of token, unless the store remembers a later
// one, or one of the same revision that holds the data this one lacks.
func (m *tokenMemory) record(token string, s tokenState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recordLocked(token, s)
}

// recordAll records the states of many tokens, as record does for each,
// under one lock.
func (m *tokenMemory) recordAll(tokens []string, states []tokenState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, token := range tokens {
		m.recordLocked(token, states[i])
	}
}

// recordLocked is record with m.mu held.
func (m *tokenMemory) recordLocked(token string, s tokenState) {
	el, ok := m.byKey[token]
	if !ok {
		m.byKey[token] = m.recent.PushFront(&tokenEntry{token: token, tokenState: s})
		m.evictLocked()
		return
	}
	m.recent.MoveToFront(el)
	e := el.Value.(*tokenEntry)
	if s.rev < e.rev || (s.rev == e.rev && e.hasData && !s.hasData) {
		return
	}
	if s.rev == e.rev && e.principalKnown && !s.principalKnown {
		s.principal, s.principalKnown, s.digests, s.sealedBy = e.principal, true, e.digests, e.sealedBy
	}
	if s.hasData && e.hasData && s.alt == "" {
		// The same session seen again, in the bytes of data or of alt.
		switch s.data {
		case e.data:
			s.alt = e.alt
		case e.alt:
			s.alt = e.data
		}
	}
	e.tokenState = s
}

// recordGone records that token's session was not stored at revision rev,
// if the store remembers the token; it does not add tokens, since only a
// token once seen stored needs guarding.
func (m *tokenMemory) recordGone(token string, rev int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.byKey[token]
	if !ok {
		return
	}
	e := el.Value.(*tokenEntry)
	if rev >= e.rev {
		e.tokenState = tokenState{rev: rev}
	}
}

// recordAlt records alt as other bytes of the session that token held at
// rev, if that is still the state remembered.
func (m *tokenMemory) recordAlt(token string, rev int64, alt string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.byKey[token]; ok {
		if e := el.Value.(*tokenEntry); e.rev == rev && e.hasData {
			e.alt = alt
		}
	}
}

// len returns how many tokens the store remembers.
func (m *tokenMemory) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.byKey)
}

// evictLocked forgets the least recently used tokens past the bound.
// m.mu must be held.
func (m *tokenMemory) evictLocked() {
	for len(m.byKey) > m.max {
		el := m.recent.Back()
		m.recent.Remove(el)
		delete(m.byKey, el.Value.(*tokenEntry).token)
	}
}
