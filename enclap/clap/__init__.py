"""clap"""
