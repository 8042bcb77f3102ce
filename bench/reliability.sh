#!/usr/bin/env bash
# Reruns every attack and fault test of RELIABILITY.md N times (default 5) and prints, per
# test, how many runs passed. The tests are the real end-to-end ones (real daemons, sockets,
# files, signals); they must pass every time.
#   bench/reliability.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5}
cargo test -q -p arsnet-tests --test e2e --no-run 2>/dev/null
TESTS=(
  dir_attacks::a_symlink_swapped_in_for_the_dump_is_refused_and_its_target_untouched
  dir_attacks::a_file_planted_at_the_dump_path_is_never_published
  dir_attacks::reserved_suffix_names_are_refused
  dir_attacks::the_majority_decides_not_the_fastest_and_a_pin_overrides_it
  dir_attacks::the_first_header_decides_nothing
  dir_attacks::no_strict_majority_fails_naming_both_contents
  dir_attacks::fetch_r_cannot_switch_a_job_to_other_content
  dir_attacks::an_orphaned_partial_download_never_chooses_the_content
  dir_attacks::a_sha256_pin_is_checked_before_publishing
  dir_attacks::a_torn_journal_header_is_kept_aside_and_the_download_completes
  dir_attacks::a_crash_after_publishing_is_completed_on_restart
  dir_attacks::a_header_larger_than_the_free_space_fails_before_any_write
  caller_rights::a_member_cannot_serve_a_file_it_cannot_read
  caller_rights::a_member_cannot_download_into_a_directory_it_cannot_write
  caller_rights::a_served_file_swapped_for_a_symlink_to_a_secret_is_never_served
  caller_rights::a_members_group_whose_file_was_replaced_is_not_restored
  socket_trust::a_daemon_of_another_uid_is_refused_before_a_byte_is_sent
  socket_trust::a_fake_daemon_at_the_tmp_fallback_path_cannot_fake_a_completed_download
  socket_trust::a_socket_directory_others_could_tamper_with_is_refused_by_the_client
  socket_trust::unreadable_state_makes_the_daemon_refuse_to_start_and_keeps_it
  socket_trust::unparseable_state_is_kept_aside_and_reported
  socket_trust::a_change_that_cannot_be_saved_is_reported_as_an_error
  socket_trust::socket_path_at_something_else_than_a_socket_is_kept_and_refused
  server_abuse::idle_connections_cannot_lock_honest_clients_out
  server_abuse::clients_that_stop_reading_cannot_lock_honest_clients_out
  server_abuse::an_in_place_edit_that_keeps_mtime_is_served_fresh
  server_abuse::a_restarted_daemon_does_not_reuse_digests_of_a_file_edited_in_place
  engine::kill9_client_daemon_then_fetch_r_resumes
  engine::full_disk_fails_clearly_and_resumes_after_space_is_freed
  engine::corrupt_segment_blames_server_and_file_is_still_correct
  engine::hostile_file_name_is_refused_and_nothing_written_outside_dir
  engine::stalled_server_is_dropped_and_its_segments_move
)
for t in "${TESTS[@]}"; do
    ok=0
    for _ in $(seq "$N"); do
        if cargo test -q -p arsnet-tests --test e2e -- --exact "$t" --test-threads=1 >/dev/null 2>&1; then
            ok=$((ok + 1))
        fi
    done
    printf '%-95s %d/%d\n' "$t" "$ok" "$N"
done
