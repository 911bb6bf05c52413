#!/bin/sh
# Resizing: 80x24 -> too small -> large -> 80x24 keeps the console alive and
# readable (header, step rows, the key bar), and q still quits with exit 0.
. tests/integration/console_lib/tmux.sh
console_setup resize
console_need_sim
console_start_sim 200
console_start "$B/taylorscope" live "$URL" --db "$DB"
console_wait "step 1/200" 30
tmux -L "$CT_SOCK" resize-window -t console -x 50 -y 12
console_wait "too small"
tmux -L "$CT_SOCK" resize-window -t console -x 160 -y 50
console_wait "heat map:"
console_wait "F10Quit"
tmux -L "$CT_SOCK" resize-window -t console -x 80 -y 24
sleep 0.5
console_wait "F10Quit"
console_screen | grep -q "step [0-9]*/200" || console_fail "no progress line at 80x24"
lines=$(console_screen | wc -l)
[ "$lines" -eq 24 ] || console_fail "screen has $lines lines, expected 24"
console_screen | grep -q "lost 0" || console_fail "the header's right end (drops, gaps) is cut off"
console_screen | tail -1 | grep -q "^F1Help" || console_fail "the key bar is not the last line"
console_keys F1
console_wait "this help"
console_keys x
console_wait "curves across steps"
console_keys q
sleep 0.5
grep -q "console exited 0" "$CT_DIR/exit" 2>/dev/null || console_fail "q did not exit 0"
