package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

// skip is one line of the skip file: a regular expression matched against
// the specs' full names, and why the specs it matches cannot pass here.
type skip struct {
	pattern string
	reason  string
}

// readSkipFile reads a skip file: each line "REGEXP  # reason"; blank lines
// and lines starting with # are ignored. A pattern without a reason or that
// does not compile is an error.
func readSkipFile(path string) ([]skip, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading the skip file: %w", err)
	}
	defer f.Close()
	return parseSkips(f, path)
}

func parseSkips(r io.Reader, path string) ([]skip, error) {
	var skips []skip
	s := bufio.NewScanner(r)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		pattern, reason, ok := strings.Cut(line, " # ")
		pattern, reason = strings.TrimSpace(pattern), strings.TrimSpace(reason)
		if !ok || reason == "" {
			return nil, fmt.Errorf("%s:%d: %q has no reason (write PATTERN  # reason)", path, n, line)
		}
		if _, err := regexp.Compile(pattern); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		skips = append(skips, skip{pattern: pattern, reason: reason})
	}
	return skips, s.Err()
}
