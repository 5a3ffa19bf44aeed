// Package logging sets up the structured logger of Spoke's binaries and
// routes client-go's klog output through it, so every line has one shape.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"k8s.io/klog/v2"
)

// New returns a logger writing to w at level ("debug", "info", "warn",
// "error") in format ("text" or "json"), and makes it klog's backend.
func New(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: l}
	var h slog.Handler
	switch strings.ToLower(format) {
	case "text", "":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("log format %q: want text or json", format)
	}
	logger := slog.New(h)
	klog.SetSlogLogger(logger)
	return logger, nil
}
