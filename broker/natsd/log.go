package natsd

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"time"
)

// logAdapter sends nats-server's log lines to slog, one level down: the server's notices
// are foreman's debug lines, its warnings and errors stay what they are.
//
// A fatal line is where nats-server's own logger would exit the process (a listener port
// taken, a store directory it cannot use); embedded, the server just never becomes
// ready. The adapter keeps the first one, so that Start returns it at once instead of
// waiting out its timeout.
//
// Lines about one client connection at warning or error level (a failed login, a
// protocol error, a TLS handshake that failed, a connection over the limit) are what
// anyone who reaches the NATS listener can make the server write, thousands a second:
// at most clientLinesPerMinute of them are logged a minute, and the next one logged after
// a minute that dropped some says how many.
type logAdapter struct {
	log *slog.Logger
	now func() time.Time // nil: time.Now

	mu    sync.Mutex
	fatal *fatalLine
	// the current minute of client lines: its start, the lines logged, those dropped
	windowAt        time.Time
	logged, dropped int
}

// clientLinesPerMinute bounds the warning and error lines about single client
// connections logged in a minute.
const clientLinesPerMinute = 10

// clientLine matches a line nats-server writes about one client connection: it starts
// with the connection's address and id ("10.0.0.7:51234 - cid:12 - "; wid, mid: a
// websocket or MQTT one).
var clientLine = regexp.MustCompile(`^\S+ - (cid|wid|mid\S*):\d+ - `)

// fatalLine is a fatal log line of nats-server: its format tells what failed.
type fatalLine struct{ format, msg string }

func (l *logAdapter) Noticef(format string, v ...any) { l.emit(slog.LevelDebug, format, v) }
func (l *logAdapter) Warnf(format string, v ...any)   { l.emit(slog.LevelWarn, format, v) }
func (l *logAdapter) Errorf(format string, v ...any)  { l.emit(slog.LevelError, format, v) }
func (l *logAdapter) Debugf(format string, v ...any)  { l.emit(slog.LevelDebug-4, format, v) }
func (l *logAdapter) Tracef(format string, v ...any)  { l.emit(slog.LevelDebug-8, format, v) }

func (l *logAdapter) Fatalf(format string, v ...any) {
	l.mu.Lock()
	if l.fatal == nil {
		l.fatal = &fatalLine{format: format, msg: fmt.Sprintf(format, v...)}
	}
	l.mu.Unlock()
	l.emit(slog.LevelError, format, v)
}

// fatalLine is the first fatal line logged, or nil.
func (l *logAdapter) fatalLine() *fatalLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatal
}

func (l *logAdapter) emit(level slog.Level, format string, v []any) {
	ctx := context.Background()
	if !l.log.Enabled(ctx, level) {
		return
	}
	msg := fmt.Sprintf(format, v...)
	if level >= slog.LevelWarn && clientLine.MatchString(msg) {
		ok, dropped := l.admit()
		if !ok {
			return
		}
		if dropped > 0 {
			l.log.Log(ctx, slog.LevelWarn, fmt.Sprintf("%d more lines about client connections were not logged in the minute before (at most %d a minute)",
				dropped, clientLinesPerMinute), "component", "nats-server")
		}
	}
	l.log.Log(ctx, level, msg, "component", "nats-server")
}

// admit reports whether a client line may be logged now, and how many were dropped in
// the minute before, when this one opens a new minute.
func (l *logAdapter) admit() (ok bool, dropped int) {
	now := time.Now()
	if l.now != nil {
		now = l.now()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.windowAt.IsZero() || now.Sub(l.windowAt) >= time.Minute || now.Before(l.windowAt) {
		dropped = l.dropped
		l.windowAt, l.logged, l.dropped = now, 0, 0
	}
	if l.logged >= clientLinesPerMinute {
		l.dropped++
		return false, 0
	}
	l.logged++
	return true, dropped
}
