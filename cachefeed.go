package etcdstore

import (
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The read cache's watch, shared with event streams (events.go): a stream
// that joins gets the copy and every later watch response's events, so it
// needs no watch of its own.

// cacheFeed is an event stream's share of the cache's watch: the events
// of each watch response after the revision it joined at, in order. ch
// is closed when the share ends: the watch ended, or the stream fell
// cacheFeedDepth responses behind.
type cacheFeed struct {
	ch chan []*clientv3.Event
}

// cacheFeedDepth is how many watch responses a feed holds for a stream
// that has not taken them yet.
const cacheFeedDepth = 256

// join makes a feed of the watch once the copy has caught up with a
// barrier started after the call, as read does: it calls f with the copy
// and its revision, under the copy's lock, so that the feed carries every
// event after that revision. It reports false, and makes no feed, when
// the copy is not in sync or does not catch up within rc.
func (c *readCache) join(rc call, f func(values map[string]storedKV, rev int64)) (*cacheFeed, bool) {
	if c.off.Load() != nil {
		return nil, false
	}
	rev, err := c.barrier(rc)
	if err != nil || c.waitRLocked(rc, rev) != nil {
		return nil, false
	}
	c.mu.RUnlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.synced || c.rev < rev {
		return nil, false // the watch ended meanwhile
	}
	f(c.values, c.rev)
	feed := &cacheFeed{ch: make(chan []*clientv3.Event, cacheFeedDepth)}
	if c.feeds == nil {
		c.feeds = make(map[*cacheFeed]bool)
	}
	c.feeds[feed] = true
	return feed, true
}

// leave ends feed, if it has not ended.
func (c *readCache) leave(feed *cacheFeed) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.feeds[feed] {
		delete(c.feeds, feed)
		close(feed.ch)
	}
}

// feedLocked hands events to every feed; one that is full ends. c.mu is
// held.
func (c *readCache) feedLocked(events []*clientv3.Event) {
	for f := range c.feeds {
		select {
		case f.ch <- events:
		default:
			delete(c.feeds, f)
			close(f.ch)
		}
	}
}
