//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package dirlock

import "os"

// tryLock locks nothing: this system has no flock(2) in package syscall.
func tryLock(*os.File) error { return nil }
