package gateway

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// failureLogEvery is how often the error line of one failure, repeated request after
// request, is logged at most.
const failureLogEvery = 10 * time.Second

// maxFailureKeys bounds the failures failureLog remembers within failureLogEvery.
const maxFailureKeys = 256

// failureLog lets the error line of a failed request through once per failureLogEvery
// for each distinct failure (its status and error text, failureKey), and counts the repeats between:
// a fault that fails every request the same way (a full disk refusing every submit, an
// Ollama that is down answering every pass-through call) is one line every 10 s with the
// count of those not logged, not a line per request written as fast as clients retry,
// maybe onto the full disk. Distinct failures are each logged: past maxFailureKeys of
// them within the window, every one is.
type failureLog struct {
	mu   sync.Mutex
	seen map[string]*failureSeen
	now  func() time.Time // time.Now; a test's clock
}

// failureSeen is when a failure was last logged, and how often it came since.
type failureSeen struct {
	at      time.Time
	repeats int
}

// failureKey is what tells failures apart for failureLog: the status and the error's
// text, its digits left out (a duration, a count, a port: the same fault a second later
// reads "for 13s" where it read "for 12s"), cut to 512 bytes.
func failureKey(status int, err error) string {
	text, _ := broker.Clip(err.Error(), 512)
	var b strings.Builder
	b.WriteString(strconv.Itoa(status))
	b.WriteByte(' ')
	digits := false
	for _, r := range text {
		if r >= '0' && r <= '9' {
			if !digits {
				b.WriteByte('#')
			}
			digits = true
			continue
		}
		digits = false
		b.WriteRune(r)
	}
	return b.String()
}

// admit reports whether failure key is to be logged now, and how many times it came
// since it last was (logged at debug only).
func (l *failureLog) admit(key string) (ok bool, repeats int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.now != nil {
		now = l.now()
	}
	if l.seen == nil {
		l.seen = make(map[string]*failureSeen)
	}
	f := l.seen[key]
	if f != nil && now.Sub(f.at) < failureLogEvery {
		f.repeats++
		return false, 0
	}
	if f == nil {
		if len(l.seen) >= maxFailureKeys {
			for k, old := range l.seen {
				if now.Sub(old.at) >= failureLogEvery {
					delete(l.seen, k)
				}
			}
		}
		if len(l.seen) >= maxFailureKeys {
			return true, 0
		}
		f = &failureSeen{}
		l.seen[key] = f
	}
	repeats = f.repeats
	f.at, f.repeats = now, 0
	return true, repeats
}
