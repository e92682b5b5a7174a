package natsd

import (
	"context"
	"fmt"
	"log/slog"
)

// logAdapter sends nats-server's log lines to slog, one level down: the server's notices
// are foreman's debug lines, its warnings and errors stay what they are.
type logAdapter struct{ log *slog.Logger }

func (l *logAdapter) Noticef(format string, v ...any) { l.emit(slog.LevelDebug, format, v) }
func (l *logAdapter) Warnf(format string, v ...any)   { l.emit(slog.LevelWarn, format, v) }
func (l *logAdapter) Fatalf(format string, v ...any)  { l.emit(slog.LevelError, format, v) }
func (l *logAdapter) Errorf(format string, v ...any)  { l.emit(slog.LevelError, format, v) }
func (l *logAdapter) Debugf(format string, v ...any)  { l.emit(slog.LevelDebug-4, format, v) }
func (l *logAdapter) Tracef(format string, v ...any)  { l.emit(slog.LevelDebug-8, format, v) }

func (l *logAdapter) emit(level slog.Level, format string, v []any) {
	ctx := context.Background()
	if !l.log.Enabled(ctx, level) {
		return
	}
	l.log.Log(ctx, level, fmt.Sprintf(format, v...), "component", "nats-server")
}
