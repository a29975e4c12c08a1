//! Tests of the i8042 state machine: what Linux's drivers do at probe, at a
//! Ctrl+Alt+Del and at reboot, and arbitrary guest accesses (property tests).

use super::*;
use proptest::prelude::*;

/// A controller as Linux's i8042 driver leaves it: keyboard interrupt on.
fn driven() -> I8042State {
    let mut s = I8042State::default();
    let _ = s.write(COMMAND_OFFSET, CMD_WRITE_CTR);
    let _ = s.write(DATA_OFFSET, CTR_POWER_ON | CTR_KBD_INT);
    s
}

/// Read the data port until the output buffer is empty.
fn drain(s: &mut I8042State) -> Vec<u8> {
    let mut out = Vec::new();
    while s.status() & STR_OBF != 0 {
        out.push(s.read(DATA_OFFSET).0);
    }
    out
}

/// A controller command with no parameter, and what it answers.
fn command(s: &mut I8042State, command: u8) -> Vec<u8> {
    let _ = s.write(COMMAND_OFFSET, command);
    drain(s)
}

#[test]
fn status_at_power_on_has_no_output_and_no_input_pending() {
    let s = I8042State::default();
    assert_eq!(s.status() & (STR_OBF | 0x02), 0);
}

#[test]
fn self_test_answers_0x55_and_keyboard_test_0x00() {
    let mut s = I8042State::default();
    assert_eq!(command(&mut s, CMD_SELF_TEST), [SELF_TEST_PASSED]);
    assert_eq!(command(&mut s, CMD_TEST_KBD), [INTERFACE_OK]);
}

#[test]
fn configuration_byte_written_is_read_back() {
    let mut s = I8042State::default();
    let _ = s.write(COMMAND_OFFSET, CMD_WRITE_CTR);
    let _ = s.write(DATA_OFFSET, 0x47);
    assert_eq!(command(&mut s, CMD_READ_CTR), [0x47]);
}

#[test]
fn aux_loopback_answers_without_the_aux_bit_and_aux_test_reports_absent() {
    let mut s = I8042State::default();
    let _ = s.write(COMMAND_OFFSET, CMD_WRITE_AUX_OUT);
    let _ = s.write(DATA_OFFSET, 0x5a);
    assert_eq!(s.status() & 0x20, 0);
    assert_eq!(drain(&mut s), [0x5a]);
    assert_eq!(command(&mut s, CMD_TEST_AUX), [AUX_ABSENT]);
}

#[test]
fn keyboard_reset_acks_passes_and_raises_the_interrupt() {
    let mut s = driven();
    let effects = s.write(DATA_OFFSET, KBD_RESET);
    assert!(effects.interrupt);
    assert_eq!(drain(&mut s), [KBD_ACK, KBD_SELF_TEST_PASSED]);
}

#[test]
fn keyboard_identify_answers_an_mf2_keyboard() {
    let mut s = driven();
    let _ = s.write(DATA_OFFSET, KBD_IDENTIFY);
    assert_eq!(drain(&mut s), [KBD_ACK, 0xab, 0x83]);
}

#[test]
fn leds_take_a_parameter_and_both_bytes_are_acked() {
    let mut s = driven();
    let _ = s.write(DATA_OFFSET, KBD_SET_LEDS);
    let _ = s.write(DATA_OFFSET, 0x07);
    assert_eq!(drain(&mut s), [KBD_ACK, KBD_ACK]);
    assert_eq!(s.pending_keyboard, None);
}

#[test]
fn scancode_set_query_answers_set_2() {
    let mut s = driven();
    let _ = s.write(DATA_OFFSET, KBD_SCANCODE_SET);
    let _ = s.write(DATA_OFFSET, 0);
    assert_eq!(drain(&mut s), [KBD_ACK, KBD_ACK, 2]);
}

#[test]
fn unknown_keyboard_command_asks_for_a_resend() {
    let mut s = driven();
    let _ = s.write(DATA_OFFSET, 0x42);
    assert_eq!(drain(&mut s), [KBD_RESEND]);
}

#[test]
fn reset_pulse_command_requests_a_reset() {
    let mut s = I8042State::default();
    assert!(s.write(COMMAND_OFFSET, 0xfe).reset);
}

#[test]
fn pulse_without_the_reset_line_and_data_port_0xfe_do_not_reset() {
    let mut s = I8042State::default();
    assert!(!s.write(COMMAND_OFFSET, 0xff).reset);
    assert!(!s.write(DATA_OFFSET, 0xfe).reset);
    assert!(!s.write(COMMAND_OFFSET, CMD_WRITE_OUTP).reset);
}

#[test]
fn ctrl_alt_del_is_refused_until_a_driver_enables_the_keyboard_interrupt() {
    let mut s = I8042State::default();
    assert_eq!(s.queue_ctrl_alt_del(), Err(KeysError::KeyboardOff));
    assert!(s.output.is_empty());
}

#[test]
fn ctrl_alt_del_is_refused_when_the_keyboard_port_is_disabled() {
    let mut s = driven();
    let _ = s.write(COMMAND_OFFSET, CMD_DISABLE_KBD);
    assert_eq!(s.queue_ctrl_alt_del(), Err(KeysError::KeyboardOff));
}

#[test]
fn ctrl_alt_del_with_translation_queues_set_1_codes_and_an_interrupt() {
    let mut s = driven();
    let effects = s.queue_ctrl_alt_del();
    assert_eq!(
        effects,
        Ok(Effects {
            interrupt: true,
            reset: false
        })
    );
    assert_eq!(drain(&mut s), CTRL_ALT_DEL_SET1);
}

#[test]
fn ctrl_alt_del_without_translation_queues_set_2_codes() {
    let mut s = I8042State::default();
    let _ = s.write(COMMAND_OFFSET, CMD_WRITE_CTR);
    let _ = s.write(DATA_OFFSET, CTR_KBD_INT);
    assert!(s.queue_ctrl_alt_del().is_ok());
    assert_eq!(drain(&mut s), CTRL_ALT_DEL_SET2);
}

#[test]
fn each_data_read_that_leaves_bytes_raises_the_interrupt_again() {
    let mut s = driven();
    assert!(s.queue_ctrl_alt_del().is_ok());
    let reads: Vec<bool> = (0..CTRL_ALT_DEL_SET1.len())
        .map(|_| s.read(DATA_OFFSET).1.interrupt)
        .collect();
    assert_eq!(reads.iter().filter(|i| **i).count(), reads.len() - 1);
    assert!(!reads[reads.len() - 1]);
}

#[test]
fn ctrl_alt_del_is_refused_when_the_buffer_cannot_hold_it() {
    let mut s = driven();
    let _ = s.write(DATA_OFFSET, KBD_IDENTIFY);
    assert!(s.queue_ctrl_alt_del().is_ok());
    assert_eq!(s.queue_ctrl_alt_del(), Err(KeysError::Full));
    assert_eq!(s.output.len(), 3 + CTRL_ALT_DEL_SET1.len());
}

#[test]
fn state_survives_serialization() {
    let mut s = driven();
    assert!(s.queue_ctrl_alt_del().is_ok());
    let _ = s.write(DATA_OFFSET, KBD_SET_LEDS);
    let bytes = postcard::to_stdvec(&s).expect("encodes");
    let back: I8042State = postcard::from_bytes(&bytes).expect("decodes");
    assert_eq!(back, s);
}

#[test]
fn an_oversized_saved_buffer_is_invalid() {
    let s = I8042State {
        output: vec![0; OUTPUT_CAPACITY + 1],
        ..I8042State::default()
    };
    assert!(!s.is_valid());
}

/// One guest access: a read or a write of a byte, at any offset of the device's range
/// (and beyond it).
#[derive(Debug, Clone)]
enum Access {
    Read(u64),
    Write(u64, u8),
    CtrlAltDel,
}

fn access() -> impl Strategy<Value = Access> {
    let offset = prop_oneof![
        Just(DATA_OFFSET),
        Just(COMMAND_OFFSET),
        0u64..8,
        any::<u64>()
    ];
    prop_oneof![
        offset.clone().prop_map(Access::Read),
        (offset, any::<u8>()).prop_map(|(o, v)| Access::Write(o, v)),
        Just(Access::CtrlAltDel),
    ]
}

fn apply(s: &mut I8042State, a: &Access) -> Effects {
    match *a {
        Access::Read(offset) => s.read(offset).1,
        Access::Write(offset, value) => s.write(offset, value),
        Access::CtrlAltDel => s.queue_ctrl_alt_del().unwrap_or_default(),
    }
}

proptest! {
    #[test]
    fn any_access_sequence_keeps_the_state_valid_and_consistent(
        accesses in proptest::collection::vec(access(), 0..400),
    ) {
        let mut s = I8042State::default();
        for a in &accesses {
            let effects = apply(&mut s, a);
            prop_assert!(s.is_valid());
            prop_assert_eq!(s.status() & STR_OBF != 0, !s.output.is_empty());
            // Only the command port can reset, and only with a pulse command.
            if effects.reset {
                let pulse = matches!(a, Access::Write(COMMAND_OFFSET, v) if *v >= 0xf0 && v & 1 == 0);
                prop_assert!(pulse, "{:?} reset", a);
            }
            // An interrupt is only ever asked for with a byte to read behind it.
            if effects.interrupt {
                prop_assert!(!s.output.is_empty());
            }
        }
    }

    #[test]
    fn a_saved_state_restores_to_the_same_behaviour(
        before in proptest::collection::vec(access(), 0..100),
        after in proptest::collection::vec(access(), 0..100),
    ) {
        let mut s = I8042State::default();
        for a in &before {
            let _ = apply(&mut s, a);
        }
        let bytes = postcard::to_stdvec(&s).expect("encodes");
        let mut restored: I8042State = postcard::from_bytes(&bytes).expect("decodes");
        for a in &after {
            prop_assert_eq!(apply(&mut s, a), apply(&mut restored, a));
            prop_assert_eq!(s.read(COMMAND_OFFSET).0, restored.read(COMMAND_OFFSET).0);
        }
        prop_assert_eq!(s, restored);
    }

    #[test]
    fn arbitrary_saved_bytes_decode_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        // A state that decodes is still checked (`is_valid`) before a restore uses it.
        let _ = postcard::from_bytes::<I8042State>(&bytes);
    }
}
