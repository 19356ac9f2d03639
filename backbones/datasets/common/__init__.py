"""The parts every dataset module shares: its declaration (`spec`), image readers (`readers`), split rules
(`splits`), folder layouts (`folders`) and downloads (`download`)."""
