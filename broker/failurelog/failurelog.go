// Package failurelog keeps a failure that repeats from flooding the log: the same
// failure, request after request or turn after turn of a loop that retries, is logged
// once per window with the count of those not logged. A full disk refusing every submit,
// an Ollama down answering every call, a NATS outage failing every loop of foreman: one
// line every 10 s for each, not one per request or retry.
package failurelog

import (
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Every is how often the line of one failure, repeated, is logged at most.
const Every = 10 * time.Second

// maxKeys bounds the failures a Window remembers within its window.
const maxKeys = 256

// maxKeyText is how much of a failure's text tells it apart (Key).
const maxKeyText = 512

// Window lets the line of each distinct failure (its Key) through once per Every and
// counts the repeats between. Distinct failures are each logged: past maxKeys of them
// within the window, every one is. The zero Window is ready to use.
type Window struct {
	// Now is the clock (time.Now when nil): a test's.
	Now func() time.Time

	mu   sync.Mutex
	seen map[string]*seen
}

// seen is when a failure was last logged, and how often it came since.
type seen struct {
	at      time.Time
	repeats int
}

// Key is what tells failures apart: prefix (a status, say) and the error's text, its
// digits left out (a duration, a count, a port: the same fault a second later reads
// "for 13s" where it read "for 12s"), cut to 512 bytes.
func Key(prefix string, err error) string {
	text := err.Error()
	if len(text) > maxKeyText {
		cut := maxKeyText
		for cut > 0 && !utf8.RuneStart(text[cut]) {
			cut--
		}
		text = text[:cut]
	}
	var b strings.Builder
	b.WriteString(prefix)
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

// Admit reports whether failure key is to be logged now, and how many times it came
// since it last was (those not logged).
func (w *Window) Admit(key string) (ok bool, repeats int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	if w.seen == nil {
		w.seen = make(map[string]*seen)
	}
	f := w.seen[key]
	if f != nil && now.Sub(f.at) < Every {
		f.repeats++
		return false, 0
	}
	if f == nil {
		if len(w.seen) >= maxKeys {
			for k, old := range w.seen {
				if now.Sub(old.at) >= Every {
					delete(w.seen, k)
				}
			}
		}
		if len(w.seen) >= maxKeys {
			return true, 0
		}
		f = &seen{}
		w.seen[key] = f
	}
	repeats = f.repeats
	f.at, f.repeats = now, 0
	return true, repeats
}

// Reset forgets every failure: the next of each is logged at once.
func (w *Window) Reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	clear(w.seen)
}

func (w *Window) now() time.Time {
	if w.Now != nil {
		return w.Now()
	}
	return time.Now()
}
