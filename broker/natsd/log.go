package natsd

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
)

// logAdapter sends nats-server's log lines to slog, one level down: the server's notices
// are foreman's debug lines, its warnings and errors stay what they are.
//
// A fatal line is where nats-server's own logger would exit the process (a listener port
// taken, a store directory it cannot use); embedded, the server just never becomes
// ready. The adapter keeps the first one, so that Start returns it at once instead of
// waiting out its timeout.
type logAdapter struct {
	log *slog.Logger
	// peers lets a warning or error about one client connection of the listener through
	// once per failurelog.Every for each kind (peerLineKind), with the count held back:
	// anyone who reaches the listener causes one with each connection, no login needed.
	peers failurelog.Window

	mu    sync.Mutex
	fatal *fatalLine
}

// logNow is the clock of the adapters' peers windows; a var for tests.
var logNow = time.Now

func newLogAdapter(log *slog.Logger) *logAdapter {
	return &logAdapter{log: log, peers: failurelog.Window{Now: func() time.Time { return logNow() }}}
}

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
	args := []any{"component", "nats-server"}
	if kind, ok := peerLineKind(msg); ok {
		msg = clipPeerLine(msg)
		if level >= slog.LevelWarn {
			admit, repeats := l.peers.Admit(kind)
			if !admit {
				level = slog.LevelDebug
				if !l.log.Enabled(ctx, level) {
					return
				}
			} else if repeats > 0 {
				args = append(args, "repeats", repeats)
			}
		}
	}
	l.log.Log(ctx, level, msg, args...)
}

// peerLine matches nats-server's lines about one client connection: its remote address,
// "pipe" for a connection foreman opened in-process, and its id ("127.0.0.1:50122 -
// cid:20 - authentication error - User \"x\"").
var peerLine = regexp.MustCompile(`^(\S+) - cid:\d+ - `)

// peerLineKind reports whether msg is about a client connection of the listener, and
// names its kind: each connection of a stranger that fails its login (a wrong password,
// an HTTP request or other bytes that are no login, a failed TLS handshake) is an error
// line, no password needed, and one process dialling in a loop made 6,000 of them (25
// MB, with a long user name) a second of foreman's log. The kind is one of a few fixed names, never the text,
// which quotes what the peer sent: a stranger could otherwise make each line a kind of
// its own. foreman's own in-process connection is not limited.
func peerLineKind(msg string) (string, bool) {
	m := peerLine.FindStringSubmatch(msg)
	if m == nil || m[1] == "pipe" {
		return "", false
	}
	rest := msg[len(m[0]):]
	switch {
	case strings.Contains(rest, "authentication error"):
		return "authentication error", true
	case strings.Contains(rest, "TLS handshake error"):
		return "TLS handshake error", true
	}
	return "other", true
}

// maxPeerLine bounds a line about a client connection: nats-server quotes what the peer
// sent in it (a user name of 4 KB from its CONNECT).
const maxPeerLine = 512

func clipPeerLine(msg string) string {
	if len(msg) <= maxPeerLine {
		return msg
	}
	cut := maxPeerLine
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "…"
}
