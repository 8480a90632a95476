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
// attempt nor a request in flight writes over a delete or a newer commit,
// and one seen deleted is not written at all. A token the store does not
// remember (a new session, a renewed token, one forgotten past the bound)
// is written only while its key is absent, and, when it is not, again on
// the revision it holds, unless that is a tombstone.
//
// Touch coalescing: a Commit whose data is what the store last saw stored
// and whose expiry is less than the touch interval later than the stored
// one writes nothing (see touchable).
//
// Sightings are ordered by etcd revision: a sighting older than the one
// remembered (a slow Find that read before a later Commit of this
// process) changes nothing, so the memory never goes back in time.
//
// The memory is bounded by a count of tokens and forgets the least
// recently used first.

// defaultRememberedTokens is how many tokens the store remembers by
// default.
const defaultRememberedTokens = 100_000

// sighting is what the store last saw of a token in etcd.
type sighting struct {
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
	// indexed is the principal the stored session names ("" for none),
	// whose index entry a change or a delete must remove, if indexKnown
	// (see WithPrincipal).
	indexed    string
	indexKnown bool
	// sums are digests of up to two encodings of the session known to
	// name indexed, so that its principal is decoded once per change,
	// not on every Find and commit.
	sums [2]uint64
}

// memoryEntry is one remembered token, the Value of its list element.
type memoryEntry struct {
	token string
	sighting
}

// memory is a bounded, least-recently-used map from token to sighting.
// It does no I/O and is safe for concurrent use by multiple goroutines.
type memory struct {
	max int

	mu     sync.Mutex               // protects byKey and recent
	byKey  map[string]*list.Element // token -> element of recent
	recent list.List                // of *memoryEntry, most recent first
}

func newMemory(max int) *memory {
	return &memory{max: max, byKey: make(map[string]*list.Element)}
}

// get returns what the store last saw of token and whether it remembers
// the token at all. The sighting is a copy: the caller may read it
// without the lock.
func (m *memory) get(token string) (sighting, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.byKey[token]
	if !ok {
		return sighting{}, false
	}
	m.recent.MoveToFront(el)
	return el.Value.(*memoryEntry).sighting, true
}

// saw records a sighting of token, unless the store remembers a later
// one, or one of the same revision that holds the data this one lacks.
func (m *memory) saw(token string, s sighting) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sawLocked(token, s)
}

// sawAll records the sightings of many tokens, as saw does for each,
// under one lock.
func (m *memory) sawAll(tokens []string, sightings []sighting) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, token := range tokens {
		m.sawLocked(token, sightings[i])
	}
}

// sawLocked is saw with m.mu held.
func (m *memory) sawLocked(token string, s sighting) {
	el, ok := m.byKey[token]
	if !ok {
		m.byKey[token] = m.recent.PushFront(&memoryEntry{token: token, sighting: s})
		m.evictLocked()
		return
	}
	m.recent.MoveToFront(el)
	e := el.Value.(*memoryEntry)
	if s.rev < e.rev || (s.rev == e.rev && e.hasData && !s.hasData) {
		return
	}
	if s.rev == e.rev && e.indexKnown && !s.indexKnown {
		s.indexed, s.indexKnown, s.sums = e.indexed, true, e.sums
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
	e.sighting = s
}

// sawGone records that token's session was not stored at revision rev,
// if the store remembers the token; it does not add tokens, since only a
// token once seen stored needs guarding.
func (m *memory) sawGone(token string, rev int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.byKey[token]
	if !ok {
		return
	}
	e := el.Value.(*memoryEntry)
	if rev >= e.rev {
		e.sighting = sighting{rev: rev}
	}
}

// sawAlt records alt as other bytes of the session that token held at
// rev, if that is still the sighting remembered.
func (m *memory) sawAlt(token string, rev int64, alt string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.byKey[token]; ok {
		if e := el.Value.(*memoryEntry); e.rev == rev && e.hasData {
			e.alt = alt
		}
	}
}

// len returns how many tokens the store remembers.
func (m *memory) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.byKey)
}

// evictLocked forgets the least recently used tokens past the bound.
// m.mu must be held.
func (m *memory) evictLocked() {
	for len(m.byKey) > m.max {
		el := m.recent.Back()
		m.recent.Remove(el)
		delete(m.byKey, el.Value.(*memoryEntry).token)
	}
}

// touchable reports whether a commit of unchanged data, to expire at
// expiry, may leave the stored session, which expires at stored, as it
// is: when the stored expiry has not passed at now, and the new expiry is
// no earlier than it and less than d later. The session then expires up
// to d earlier than the commit asked, never later. d <= 0 means never.
func touchable(now, stored, expiry time.Time, d time.Duration) bool {
	return d > 0 && stored.After(now) && !expiry.Before(stored) && expiry.Sub(stored) < d
}
