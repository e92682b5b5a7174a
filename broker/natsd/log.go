package natsd

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
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

	mu    sync.Mutex
	fatal *fatalLine
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
	l.log.Log(ctx, level, fmt.Sprintf(format, v...), "component", "nats-server")
}
