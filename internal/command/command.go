// Package command starts Spoke's long-running binaries the same way: the
// -log-level and -log-format flags, a structured logger (internal/logging),
// a context that SIGINT and SIGTERM cancel, and the exit codes: 2 for a
// bad flag, 1 for a failed run.
package command

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spoke-proxy/spoke/internal/logging"
)

// Logging holds the logging flags.
type Logging struct {
	level, format string
}

// Register adds -log-level and -log-format to fs.
func (l *Logging) Register(fs *flag.FlagSet) {
	fs.StringVar(&l.level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", "text", "text or json")
}

// Logger returns the logger the flags ask for, writing to stderr; it exits
// with status 2 when they ask for none it knows.
func (l *Logging) Logger() *slog.Logger {
	log, err := logging.New(os.Stderr, l.level, l.format)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	return log
}

// Run calls run with a context that SIGINT and SIGTERM cancel. If run
// fails, it logs "<what> failed" with the error and exits with status 1.
func Run(log *slog.Logger, what string, run func(context.Context) error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		log.Error(what+" failed", "err", err)
		os.Exit(1)
	}
}
