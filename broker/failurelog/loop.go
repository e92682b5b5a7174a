package failurelog

import (
	"log/slog"
	"sync"
)

// Loop logs the failures of one loop that retries (a poll, a heartbeat, the worker's pick
// of its next job), each under the loop's message: the first of a failure at warn, the
// same again at most once per Every with its repeats, the others at debug; and once the
// loop works again, one info line. The zero Loop is ready to use; it is safe for
// concurrent use.
type Loop struct {
	// Window times the repeats (its Now is a test's clock).
	Window Window

	mu       sync.Mutex
	failures int // since the loop last worked
}

// Failed logs the loop's failure err to log under msg, what the loop failed to do (args
// are more attributes of the line).
func (l *Loop) Failed(log *slog.Logger, msg string, err error, args ...any) {
	l.mu.Lock()
	l.failures++
	l.mu.Unlock()
	args = append(args, "err", err)
	ok, repeats := l.Window.Admit(Key("", err))
	if !ok {
		log.Debug(msg, args...)
		return
	}
	if repeats > 0 {
		args = append(args, "repeats", repeats)
	}
	log.Warn(msg, args...)
}

// Worked notes that the loop did what it failed to: after failures, it says so once to
// log, as msg ": works again" with how many there were, and the next failure is logged
// at once.
func (l *Loop) Worked(log *slog.Logger, msg string) {
	l.mu.Lock()
	n := l.failures
	l.failures = 0
	l.mu.Unlock()
	if n == 0 {
		return
	}
	l.Window.Reset()
	log.Info(msg+": works again", "failures", n)
}
