// Package dirlock takes an exclusive lock on a file without waiting for
// it: the lock of a directory that one process at a time may use, such as
// an embedded etcd's data directory.
//
// On Linux, macOS and the BSDs the lock is flock(2) with LOCK_EX|LOCK_NB,
// which belongs to the open file: another TryLock of the same file fails,
// from this process or any other, until Unlock or until the process that
// holds it ends (the kernel drops it then, so a crash leaves no stale
// lock). Elsewhere TryLock locks nothing.
package dirlock

import (
	"errors"
	"fmt"
	"os"
)

// ErrLocked is returned, wrapped, by TryLock when another open of the
// file holds the lock.
var ErrLocked = errors.New("dirlock: locked")

// Lock is a lock TryLock holds until Unlock.
type Lock struct {
	f *os.File
}

// TryLock creates the file at path if it does not exist and takes an
// exclusive lock on it, or returns an error that wraps ErrLocked at once
// when another holder has it.
func TryLock(path string) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("dirlock: %w", err)
	}
	if err := tryLock(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("dirlock: lock %s: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// Unlock releases the lock. The file stays, for the next TryLock.
func (l *Lock) Unlock() error {
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("dirlock: %w", err)
	}
	return nil
}
